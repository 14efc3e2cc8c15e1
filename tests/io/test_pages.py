"""Reading many frames through memory maps must not grow the resident set."""
import subprocess
import sys
import textwrap

import numpy as np

from skystack.io import write_ser


def test_reading_a_long_ser_keeps_rss_flat(tmp_path):
    # 300 frames × 1 MB: without releasing pages RSS would grow by ~300 MB
    path = tmp_path / "long.ser"
    frame = np.arange(1024 * 512, dtype=np.uint16).reshape(512, 1024)
    write_ser(path, (frame for _ in range(300)), depth=16)
    code = textwrap.dedent(f"""
        import resource
        from skystack.io import open_frames
        fs = open_frames([{str(path)!r}])
        fs.read_raw(0)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for i in range(len(fs)):
            fs.read_raw(i)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": ":".join(sys.path)})
    grown_mb = float(out.stdout.strip().splitlines()[-1])
    assert grown_mb < 40, f"RSS grew by {grown_mb:.0f} MB over 300 MB of frames"
