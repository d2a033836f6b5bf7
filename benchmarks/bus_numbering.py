"""Redis CPU per record a producer publishes: 200,000 trades over 2,000
symbols, 100 records a message, into a redis-server of its own.

    python benchmarks/bus_numbering.py

Runs with any tickcast since the bus began (before the record module it
builds records with dialects.marketai.encode), so that a previous version
installed elsewhere measures the same way."""
import asyncio, os, shutil, socket, subprocess, sys, time
from tickcast.bus.redis import RedisBus
try:
    from tickcast.bus import record as rec
    mk = rec.marketai_record
except ImportError:                 # before the record module: dialects.marketai.encode
    from tickcast.dialects.marketai import encode
    mk = lambda c, s, d: (*encode(c, s, d), False)
def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().split(")")[-1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
async def main():
    port = free_port()
    r = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    bus = RedisBus(f"redis://127.0.0.1:{port}/0")
    await bus.connect()
    msgs = []
    for m in range(2000):
        records = []
        for i in range(100):
            s = f"S{(m * 100 + i) % 2000}/USDT"
            t = mk("trades", s, {"symbol": s, "price": "1", "id": i})
            records.append(t)
        msgs.append(records)
    await bus.send(msgs[0])
    c0, t0 = cpu(r.pid), time.monotonic()
    for records in msgs:
        await bus.send(records)
    c1, t1 = cpu(r.pid), time.monotonic()
    n = 100 * len(msgs)
    print(f"{n} records: redis {(c1 - c0) / n * 1e6:.2f} us CPU a record, producer wall {(t1 - t0) / n * 1e6:.2f} us a record")
    await bus.close(); r.kill()
asyncio.run(main())
