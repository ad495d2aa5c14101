"""Reference Flight servers for the ingest benchmarks, written with pyarrow:

  null   decodes each DoPut batch and discards it (the protocol ceiling);
  fsync  appends each batch to an Arrow IPC stream file and fsyncs it before
         acknowledging (the straightforward durable server).

Both send one PutResult per batch, as Longbow does. --fail-every N ends every
Nth DoPut batch's stream with UNAVAILABLE instead (that batch not stored), to
test how clients count and retry errors.
"""

import argparse
import json
import os
import threading

import pyarrow as pa
import pyarrow.flight as fl


class RefServer(fl.FlightServerBase):
    def __init__(self, location, mode, data_dir, fail_every=0):
        super().__init__(location)
        self.mode = mode
        self.data_dir = data_dir
        self.fail_every = fail_every
        self.lock = threading.Lock()
        self.n = 0
        self.batches = 0

    def do_put(self, context, descriptor, reader, writer):
        name = descriptor.path[0].decode()
        sink = None
        if self.mode == "fsync":
            with self.lock:
                self.n += 1
                path = os.path.join(self.data_dir, f"{name}-{self.n}.arrows")
            f = open(path, "wb")
            sink = pa.ipc.new_stream(f, reader.schema)
        try:
            for chunk in reader:
                batch = chunk.data
                if self.fail_every:
                    with self.lock:
                        self.batches += 1
                        fail = self.batches % self.fail_every == 0
                    if fail:
                        raise fl.FlightUnavailableError("ref-server: refused (--fail-every)")
                if sink is not None:
                    sink.write_batch(batch)
                    f.flush()
                    os.fsync(f.fileno())
                writer.write(pa.py_buffer(json.dumps({"rows": batch.num_rows}).encode()))
        finally:
            if sink is not None:
                sink.close()
                f.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["null", "fsync"], required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--data", default="/tmp/longbow-ref")
    p.add_argument("--fail-every", type=int, default=0, help="refuse every Nth batch with UNAVAILABLE")
    a = p.parse_args()
    os.makedirs(a.data, exist_ok=True)
    server = RefServer(f"grpc://127.0.0.1:{a.port}", a.mode, a.data, a.fail_every)
    print(f"ref-server ready flight=127.0.0.1:{server.port}", flush=True)
    server.serve()


if __name__ == "__main__":
    main()
