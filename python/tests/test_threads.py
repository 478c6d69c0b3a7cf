"""The GIL is released while the library computes: while two Python
threads are each inside one long library call, a third thread wakes from
its sleeps on time, and the two calls give the serial results."""

import threading
import time

import numpy as np

import tinkerloss as tl


def test_two_threads_at_once_with_serial_results():
    g = np.random.default_rng(0)
    xs = [g.standard_normal((256, 40000), dtype=np.float32) for _ in range(2)]
    ts = [g.integers(0, 40000, 256) for _ in range(2)]
    # one call reads the same 41 MB of logits for 48 datums (2 GB): about
    # half a second on an idle machine
    data = [[{"model_input": {"chunks": []},
              "loss_fn_inputs": {"target_tokens": t, "weights": np.ones(256, np.float32)}}] * 48
            for t in ts]

    def call(i):
        return tl.forward_backward(data[i], "cross_entropy", logits=[xs[i]] * 48, grads=False,
                                   threads=1)

    serial = [call(i) for i in range(2)]
    results, spans = [None, None], [None, None]
    start = threading.Barrier(3)

    def work(i):
        start.wait()
        t0 = time.perf_counter()
        results[i] = call(i)
        spans[i] = time.perf_counter() - t0

    workers = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for w in workers:
        w.start()
    start.wait()
    late = []  # how late each 10 ms sleep of this thread ended
    while any(w.is_alive() for w in workers):
        t0 = time.perf_counter()
        time.sleep(0.01)
        late.append(time.perf_counter() - t0 - 0.01)
    for w in workers:
        w.join()
    for i in range(2):
        assert results[i].metrics == serial[i].metrics
        for got, want in zip(results[i].loss_fn_outputs, serial[i].loss_fn_outputs):
            assert np.array_equal(got["logprobs"], want["logprobs"])
    # a call holding the GIL would keep this thread from waking until it
    # returned: one of its sleeps would end a whole call late (measured: at
    # most 4 ms late on an idle machine; 0.26 s, most of a call, with the
    # calls made through ctypes.PyDLL, which holds the GIL)
    assert min(spans) > 0.2, spans
    assert len(late) > 10 and max(late) < 0.25 * min(spans), (max(late), spans)
