#!/usr/bin/env python3
"""500-turn `defkv chat` conversation driven through a pipe (docs/reliability.md, "Soak").

usage: docs/soak/chat_soak.py DEFKV MODEL OUT.tsv [TURNS [extra chat flags...]]

Starts `DEFKV chat -m MODEL --template plain -q --stats --kv-budget 128 -n 32 -c 65536`
(the extra flags are appended), writes one user line per turn to its stdin,
waits for the reply's stats line on stderr, and logs per turn: turn, positions,
KV KiB in use, eviction rounds, the process's RSS (VmRSS of
/proc/PID/status) and seconds for the turn. Fails (exit 1) if a turn ends
without its stats line (an error, a cancellation or a full context) or the
process exits before /quit.
"""
import subprocess
import sys
import time

defkv, model, out = sys.argv[1:4]
turns = int(sys.argv[4]) if len(sys.argv) > 4 else 500
extra = sys.argv[5:]
subjects = ["a cat", "a red ball", "the sea", "a big tree", "a little dog", "the moon", "a birthday cake", "a toy car"]

cmd = [defkv, "chat", "-m", model, "--template", "plain", "-q", "--stats", "--kv-budget", "128", "-n", "32", "-c", "65536"] + extra
proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def rss_kib():
    with open(f"/proc/{proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


t_start = time.monotonic()
with open(out, "w") as log:
    log.write("turn\tpositions\tkv_kib\tevict_rounds\trss_kib\tseconds\n")
    for turn in range(1, turns + 1):
        t0 = time.monotonic()
        proc.stdin.write(f"Tell me a story about {subjects[turn % len(subjects)]}, number {turn}.\n")
        proc.stdin.flush()
        line = proc.stderr.readline()
        # the reply's stats line: "[32 tokens in 0.10 s; positions 209; KV 141.6 KiB, 1 eviction rounds]"
        if not line.startswith("[") or "positions" not in line:
            sys.exit(f"turn {turn}: expected the stats line, got {line!r}")
        fields = line.strip("[]\n").replace(";", ",").split(",")
        positions = int(fields[1].split()[1])
        kv_kib = float(fields[2].split()[1])
        rounds = int(fields[3].split()[0])
        log.write(f"{turn}\t{positions}\t{kv_kib}\t{rounds}\t{rss_kib()}\t{time.monotonic() - t0:.3f}\n")
        log.flush()
    proc.stdin.write("/quit\n")
    proc.stdin.flush()
    rc = proc.wait()
print(f"{turns} turns in {time.monotonic() - t_start:.1f} s, exit status {rc}")
sys.exit(0 if rc == 0 else 1)
