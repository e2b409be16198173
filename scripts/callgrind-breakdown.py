#!/usr/bin/env python3
"""Where a counted figure's instructions go, by what the code does.

    scripts/callgrind-breakdown.py SHORT.callgrind.2 LONG.callgrind.2 UNITS

Takes the measured-phase profiles of a short and a long counted run (see BENCHMARKS.md,
"Counts: method"), each function's own (exclusive) instructions from `callgrind_annotate
--inclusive=no`, and prints (long - short) / UNITS summed by category, with the three
largest functions of each. UNITS is the difference in units of work between the runs
(20000 relayed messages for 2,000 vs 12,000 round trips; 1000 pairings for 200 vs 1,200).
The categories are name patterns, first match wins; read the functions beside each sum.
"""
import re
import subprocess
import sys

CATEGORIES = [
    ("logging and audit: tracing events, formatting, SHA-256 fingerprints, timestamps",
     r"tracing|fmt::|core::fmt|chrono|sha2::|nu_ansi|format_inner|fingerprint|audit::"
     r"|String as core::fmt|pad_integral|Debug>::fmt|Display>::fmt|DateTime"),
    ("WebSocket handshake: SHA-1 accept key, verify, 101 response",
     r"sha1::|hash_key|handshake|digest::"),
    ("JSON: scan and check the data message (UTF-8, string scan, fields)",
     r"json::|from_utf8|serde_json|serde::|flat_object|scan_string|Fields::"
     r"|protocol::pairing::parse|fast_data"),
    ("WebSocket frame decode, unmask",
     r"decode::Decoder|mask|ws::codec|Parser::|tungstenite::protocol::frame|FrameHeader"),
    ("HTTP request parsing and routing (httparse, headers, actix-http)",
     r"httparse|http::header|actix_http|actix_service|actix_server|actix_web|actix_codec"
     r"|HeaderMap|regex|router"),
    ("hash maps (hashing, lookups)", r"hash|sip::|foldhash|hashbrown"),
    ("outgoing frame built, outbox, writer",
     r"text_frame|data_frame|outbox::|Outbox|wire::Writer|try_write|write_vectored|frame::"
     r"|delivery::|Pipes|pipes::|Linger|kill::"),
    ("relay's own handling (socket, registry, pairing table, metrics, limits)",
     r"hermit_relay::|prometheus"),
    ("actix actor, mailbox, context", r"actix::|actix_rt|ContextFut|AddressReceiver|Envelope"),
    ("tokio runtime, tasks, timers, I/O readiness", r"tokio::|mio::|tokio_util"),
    ("malloc / free", r"malloc|free|_int_|unlink_chunk|realloc|memalign|tcache"),
    ("memcpy / memset", r"mem(cpy|set|move)"),
    ("libc: syscall wrappers, clock, atomics (the kernel's work is not counted)",
     r"libc\.so|epoll|recv|send|clock_gettime|pthread|Timespec|bytes::|parking_lot|futex"
     r"|LocalKey"),
]

# callgrind_annotate also lists thread roots with their whole cost: they are left out.
ROOTS = (r"block_on|thread_start|start_thread|__rust_begin_short_backtrace"
         r"|call_once\{\{vtable|^\S*clone \[|run_until|PROGRAM TOTALS|below main")


def exclusive(path):
    """Each function's exclusive instructions in one callgrind output file."""
    out = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--inclusive=no", path],
        capture_output=True, text=True, check=True).stdout
    costs, started = {}, False
    for line in out.splitlines():
        if "file:function" in line:
            started = True
            continue
        match = started and re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(\S.*)$", line)
        if match:
            name = match.group(2)
            costs[name] = costs.get(name, 0) + int(match.group(1).replace(",", ""))
    return costs


def category(name):
    for label, pattern in CATEGORIES:
        if re.search(pattern, name):
            return label
    return "other"


def short_name(name):
    name = re.sub(r" \[.*", "", name)
    return name.split(":", 1)[-1] if name.startswith(("???:", "./")) else name


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    short, long_, units = exclusive(sys.argv[1]), exclusive(sys.argv[2]), float(sys.argv[3])
    whole = max(long_.values())
    for costs in (short, long_):
        for name in [n for n in long_ if long_[n] >= 0.4 * whole or re.search(ROOTS, n)]:
            costs.pop(name, None)
    by = {}
    for name in set(short) | set(long_):
        per_unit = (long_.get(name, 0) - short.get(name, 0)) / units
        by.setdefault(category(name), []).append((per_unit, name))
    print(f"total {sum(v for rows in by.values() for v, _ in rows):.0f}")
    for label, rows in sorted(by.items(), key=lambda item: -sum(v for v, _ in item[1])):
        top = ", ".join(f"{short_name(n)[-55:]} {v:.0f}" for v, n in sorted(rows)[::-1][:3])
        print(f"{sum(v for v, _ in rows):8.0f}  {label}   [{top}]")


if __name__ == "__main__":
    main()
