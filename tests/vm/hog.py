"""Allocates and touches the given number of MiB, one MiB at a time, then waits forever."""
import sys
import time

chunks = []
for _ in range(int(sys.argv[1])):
    chunks.append(bytearray(b"x" * (1 << 20)))
print(f"holding {len(chunks)} MiB", flush=True)
while True:
    time.sleep(3600)
