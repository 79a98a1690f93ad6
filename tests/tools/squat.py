"""A local user who tries to take a dtun lock file by flock (the outside review's probe).

Usage: squat.py LOCKFILE SECONDS. Opens the file read-only (which is all a stranger may do)
and waits for an exclusive flock on it; prints "squatter: cannot open: …", "squatter: waiting"
and "squatter: took the lock" as it goes, then holds it for SECONDS.
"""
import fcntl
import sys
import time

try:
    f = open(sys.argv[1], "rb")
except OSError as e:
    print("squatter: cannot open:", e, flush=True)
    sys.exit(0)
print("squatter: waiting", flush=True)
fcntl.flock(f, fcntl.LOCK_EX)
print("squatter: took the lock", flush=True)
time.sleep(float(sys.argv[2]))
