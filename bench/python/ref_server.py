"""Reference Flight servers for the ingest benchmarks, written with pyarrow:

  null   decodes each DoPut batch and discards it (the protocol ceiling);
  fsync  appends each batch to an Arrow IPC stream file and fsyncs it before
         acknowledging (the straightforward durable server).

Both send one PutResult per batch, as Longbow does.
"""

import argparse
import json
import os
import threading

import pyarrow as pa
import pyarrow.flight as fl


class RefServer(fl.FlightServerBase):
    def __init__(self, location, mode, data_dir):
        super().__init__(location)
        self.mode = mode
        self.data_dir = data_dir
        self.lock = threading.Lock()
        self.n = 0

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
    a = p.parse_args()
    os.makedirs(a.data, exist_ok=True)
    server = RefServer(f"grpc://127.0.0.1:{a.port}", a.mode, a.data)
    print(f"ref-server ready flight=127.0.0.1:{server.port}", flush=True)
    server.serve()


if __name__ == "__main__":
    main()
