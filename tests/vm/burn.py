"""Keeps the given number of CPUs busy (one process each) until it is stopped."""
import os
import sys

for _ in range(int(sys.argv[1]) - 1):
    if os.fork() == 0:
        break
while True:
    pass
