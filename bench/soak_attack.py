#!/usr/bin/env python3
"""One hostile client for bench/soak.sh: idle connections and slowloris heads.

    python3 bench/soak_attack.py HOST PORT SECONDS --idle N --slowloris M --source IP --out FILE

Keeps up to N connections open without sending anything and M connections dribbling a
request head (one header byte per second), all from source address IP; every connection
the server closes is reopened, so the pressure lasts SECONDS. Writes a JSON summary to
FILE: connections opened, closed by the server, the most held open at once, connect
errors, and how long the server took to close slowloris connections (median, max).
"""
import argparse
import asyncio
import json
import resource
import statistics
import time


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("seconds", type=float)
    ap.add_argument("--idle", type=int, default=10000)
    ap.add_argument("--slowloris", type=int, default=0)
    ap.add_argument("--source", default="127.0.0.2")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stats = {"opened": 0, "closed_by_server": 0, "connect_errors": 0, "open_now": 0,
             "max_open": 0, "slowloris_closed_after_s": []}
    end = time.monotonic() + a.seconds

    async def hold(kind):
        while time.monotonic() < end:
            try:
                reader, writer = await asyncio.open_connection(
                    a.host, a.port, local_addr=(a.source, 0))
            except OSError:
                stats["connect_errors"] += 1
                await asyncio.sleep(0.5)
                continue
            stats["opened"] += 1
            stats["open_now"] += 1
            stats["max_open"] = max(stats["max_open"], stats["open_now"])
            started = time.monotonic()
            try:
                if kind == "slow":
                    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                    while time.monotonic() < end:
                        await writer.drain()
                        try:
                            data = await asyncio.wait_for(reader.read(1), 1.0)
                            if not data:
                                break
                        except asyncio.TimeoutError:
                            writer.write(b"a")
                else:
                    left = end - time.monotonic()
                    if left > 0:
                        try:
                            await asyncio.wait_for(reader.read(1), left)
                        except asyncio.TimeoutError:
                            pass
            except (OSError, ConnectionError):
                pass
            finally:
                stats["open_now"] -= 1
                if time.monotonic() < end:
                    stats["closed_by_server"] += 1
                    if kind == "slow":
                        stats["slowloris_closed_after_s"].append(time.monotonic() - started)
                try:
                    writer.close()
                except Exception:
                    pass
            # A persistent client, not a connect flood: reconnect a second later.
            await asyncio.sleep(1.0)

    tasks = [asyncio.create_task(hold("idle")) for _ in range(a.idle)]
    tasks += [asyncio.create_task(hold("slow")) for _ in range(a.slowloris)]
    await asyncio.gather(*tasks, return_exceptions=True)
    slow = stats.pop("slowloris_closed_after_s")
    # Closed within a second: refused at accept (a cap); later: cut by the header timeout.
    cut = [t for t in slow if t >= 1.0]
    stats["slowloris_refused_at_accept"] = len(slow) - len(cut)
    stats["slowloris_cut"] = len(cut)
    stats["slowloris_cut_after_median_s"] = round(statistics.median(cut), 2) if cut else None
    stats["slowloris_cut_after_max_s"] = round(max(cut), 2) if cut else None
    stats["nofile_limit"] = hard
    with open(a.out, "w") as f:
        json.dump(stats, f)


if __name__ == "__main__":
    asyncio.run(main())
