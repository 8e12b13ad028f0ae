"""A writer process for the concurrency and crash tests: ``python writer.py STORE MODE ...``.

- ``count THREADS N``: each thread creates N records, then one JSON line with
  the number created and every exception raised to the caller is printed.
- ``forever``: create records until killed, printing each id on its own line
  (flushed) only after ``create()`` returned, so every printed id was promised
  durable before the kill.
"""

from __future__ import annotations

import json
import sys
import threading

from galtea_local import Galtea


def _create(galtea: Galtea, session: str, n: int) -> object:
    return galtea.inference_results.create(
        session_id=session, input=f"question {n}", output="answer", latency=float(n),
        usage_info={"input_tokens": n, "output_tokens": 1},
    )  # fmt: skip


def count(galtea: Galtea, threads: int, per_thread: int, tag: str) -> None:
    created, errors = [0], []
    lock = threading.Lock()

    def work(worker: int) -> None:
        for n in range(per_thread):
            try:
                _create(galtea, f"{tag}-t{worker}", n)
            except Exception as exc:  # the test asserts there are none; report each one
                with lock:
                    errors.append(repr(exc))
                continue
            with lock:
                created[0] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    print(json.dumps({"created": created[0], "errors": errors[:20], "error_count": len(errors)}), flush=True)


def forever(galtea: Galtea) -> None:
    n = 0
    while True:
        record = _create(galtea, "crash", n)
        sys.stdout.write(record.id + "\n")
        sys.stdout.flush()
        n += 1


def main(argv: list[str]) -> None:
    store, mode = argv[1], argv[2]
    with Galtea(store=store) as galtea:
        if mode == "count":
            count(galtea, int(argv[3]), int(argv[4]), argv[5] if len(argv) > 5 else "w")
        else:
            forever(galtea)


if __name__ == "__main__":
    main(sys.argv)
