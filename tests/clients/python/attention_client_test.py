#!/usr/bin/python3
"""A third-party client of ihip.v1.Attention: Python, grpcio and numpy from Debian.

Generates the Python stubs from proto/ at test time, starts ihip-server (--kv_backend=memory,
port 0), then
  1. grpc.health.v1 answers SERVING;
  2. with a full-budget config (every stage keeps 1 << 24 tokens), AppendKV + one Attend decode
     step (unary and through AttendStream) equal numpy dense attention (GQA) within fp32
     tolerance, on a dense layer and on a sparse layer;
  3. with the default config, a planted needle (random-walk keys, one 8-token block aligned with
     the query far above the rest) is among the returned selected_blocks;
  4. errors arrive as gRPC codes (NOT_FOUND, INVALID_ARGUMENT) and a rejected request changes
     nothing.
Kills the server at the end.

Exit codes: 0 passed, 1 failed, 77 skipped (this python lacks grpc or numpy).
Usage: attention_client_test.py --server_bin PATH --proto_dir PATH
"""

import argparse
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

SKIP = 77

try:
    import grpc
    import numpy as np
except ImportError as e:  # the only reason to skip
    print(f"SKIP: {sys.executable} cannot import grpc and numpy ({e}); "
          "install python3-grpcio python3-grpc-tools python3-numpy", flush=True)
    sys.exit(SKIP)

HQ, HKV, D = 4, 2, 64
FULL = 1 << 24  # kept tokens per stage: more than any context here, a multiple of every chunk


def generate_stubs(proto_dir, out_dir):
    """Python stubs of ihip/v1/attention.proto into out_dir, by grpc_tools or by protoc.

    Debian 12's python3-grpc-tools (1.14) bundles a protoc too old for proto3 `optional`
    fields, which attention.proto uses; then the system protoc (protobuf-compiler, the same
    release as python3-protobuf) with grpc_python_plugin (protobuf-compiler-grpc) does it.
    """
    proto = "ihip/v1/attention.proto"
    errors = []
    try:
        from grpc_tools import protoc
        rc = protoc.main(["grpc_tools.protoc", f"-I{proto_dir}", f"--python_out={out_dir}",
                          f"--grpc_python_out={out_dir}", proto])
        if rc == 0:
            return "grpc_tools.protoc"
        errors.append(f"grpc_tools.protoc exited {rc}")
    except ImportError as e:
        errors.append(f"grpc_tools: {e}")
    protoc_bin, plugin = shutil.which("protoc"), shutil.which("grpc_python_plugin")
    if protoc_bin and plugin:
        r = subprocess.run([protoc_bin, f"-I{proto_dir}", f"--python_out={out_dir}",
                            f"--grpc_python_out={out_dir}",
                            f"--plugin=protoc-gen-grpc_python={plugin}", proto],
                           capture_output=True, text=True)
        if r.returncode == 0:
            return f"{protoc_bin} + {plugin} (after: {'; '.join(errors)})"
        errors.append(f"protoc: {r.stderr.strip()}")
    else:
        errors.append("no protoc and grpc_python_plugin on PATH")
    raise RuntimeError("cannot generate the Python stubs: " + "; ".join(errors))


class Server:
    """ihip-server as a child process; parses its ready line."""

    def __init__(self, binary, log_path):
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, "--kv_backend=memory", "--grpc_address=127.0.0.1:0",
             "--metrics_host=127.0.0.1", "--metrics_port=0", "--threads=2"],
            stdout=subprocess.PIPE, stderr=self.log)
        self.log_path = log_path
        self.port = self._wait_ready(60)

    def _wait_ready(self, timeout):
        deadline, buf = time.time() + timeout, b""
        while time.time() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if r:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
                for line in buf.decode(errors="replace").splitlines():
                    if line.startswith("ihip-server ready"):
                        fields = dict(f.split("=", 1) for f in line.split()[2:])
                        return int(fields["grpc_port"])
            if self.proc.poll() is not None:
                break
        raise RuntimeError("ihip-server did not become ready; its log:\n" + self.read_log())

    def read_log(self):
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self.log.close()


def dense_attention(q, k, v, scale):
    """o[h] = softmax(scale * q_h k_g^T) v_g with g = h // (Hq / Hkv); float64 reference.

    q: [Hq, D], k and v: [N, Hkv, D] -> [Hq, D]."""
    hq, hkv = q.shape[0], k.shape[1]
    o = np.empty(q.shape, dtype=np.float64)
    for h in range(hq):
        g = h // (hq // hkv)
        s = k[:, g, :].astype(np.float64) @ q[h].astype(np.float64) * scale
        p = np.exp(s - s.max())
        o[h] = (p / p.sum()) @ v[:, g, :].astype(np.float64)
    return o


class Client:
    def __init__(self, pb, pb_grpc, port):
        self.pb = pb
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{port}",
            options=[("grpc.max_receive_message_length", 64 << 20),
                     ("grpc.max_send_message_length", 64 << 20)])
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.stub = pb_grpc.AttentionStub(self.channel)

    def health(self):
        # grpc.health.v1.Health/Check by hand (python3-grpcio ships no health stubs): an empty
        # HealthCheckRequest (service "") and the response's field 1 (status), SERVING = 1.
        check = self.channel.unary_unary("/grpc.health.v1.Health/Check",
                                         request_serializer=lambda b: b,
                                         response_deserializer=lambda b: b)
        return check(b"", timeout=10)

    def create(self, seq_id, num_layers, config=None, dtype=None):
        pb = self.pb
        model = pb.ModelSpec(num_layers=num_layers, num_q_heads=HQ, num_kv_heads=HKV, head_dim=D,
                             dtype=dtype or pb.DTYPE_FP32,
                             rope=pb.RopeSpec(mode=pb.ROPE_MODE_NONE))
        req = pb.CreateSequenceRequest(model=model, sequence_id=seq_id)
        if config is not None:
            req.config.CopyFrom(config)
        return self.stub.CreateSequence(req, timeout=30)

    def append(self, seq_id, layer, k, v, chunk=1024, position=0):
        pb = self.pb

        def chunks():
            for t in range(0, k.shape[0], chunk):
                kc, vc = k[t:t + chunk], v[t:t + chunk]
                yield pb.AppendKVChunk(sequence_id=seq_id, layer=layer, position=position + t,
                                       num_tokens=kc.shape[0], k=kc.tobytes(), v=vc.tobytes())

        return self.stub.AppendKV(chunks(), timeout=120)

    def item(self, seq_id, layer, position, q, k, v, mode=None, blocks=False):
        pb = self.pb
        return pb.AttendItem(sequence_id=seq_id, layer=layer, position=position, num_tokens=1,
                             q=q.tobytes(), k=k.tobytes(), v=v.tobytes(),
                             mode=mode or pb.ATTENTION_MODE_SPARSE,
                             return_selected_blocks=blocks)

    def attend(self, item):
        resp = self.stub.Attend(self.pb.AttendRequest(items=[item], request_id=7), timeout=60)
        assert resp.request_id == 7, f"request_id echoed as {resp.request_id}"
        assert len(resp.results) == 1, f"{len(resp.results)} results for one item"
        return resp.results[0]


def check_close(name, o_bytes, want, rtol=1e-3, atol=1e-4):
    o = np.frombuffer(o_bytes, dtype=np.float32).reshape(want.shape)
    err = np.abs(o - want)
    ok = np.all(err <= atol + rtol * np.abs(want))
    print(f"  {name}: max |o - dense| = {err.max():.3g} (max |dense| {np.abs(want).max():.3g})")
    assert ok, f"{name}: o differs from numpy dense attention; max error {err.max()}"


def test_full_budget_equals_dense(c, rng):
    """6144 tokens: past sink + 2048 + window, so only the full budget makes sparse == dense."""
    pb = c.pb
    stages = [pb.StageSpec(chunk_size=256, kept_tokens=FULL, refresh_interval=16),
              pb.StageSpec(chunk_size=32, kept_tokens=FULL, refresh_interval=8),
              pb.StageSpec(chunk_size=8, kept_tokens=FULL, refresh_interval=4)]
    config = pb.HipConfig(all_layers=pb.LayerHipConfig(stages=stages))
    info = c.create("py-full", 4, config)
    assert info.sequence_id == "py-full", info
    assert list(info.layer_lengths) == [0, 0, 0, 0], info.layer_lengths
    n = 6144
    scale = 1.0 / np.sqrt(D)
    for layer in (0, 3):  # a dense layer (default {0, 1, 2}) and a sparse one
        k = rng.standard_normal((n + 2, HKV, D)).astype(np.float32)
        v = rng.standard_normal((n + 2, HKV, D)).astype(np.float32)
        q = rng.standard_normal((2, HQ, D)).astype(np.float32)
        resp = c.append("py-full", layer, k[:n], v[:n])
        assert resp.layer_lengths[layer] == n, resp
        r = c.attend(c.item("py-full", layer, n, q[0], k[n], v[n]))
        assert r.attended_keys == n + 1, f"attended {r.attended_keys} keys, want {n + 1}"
        check_close(f"layer {layer} unary Attend", r.o, dense_attention(q[0], k[:n + 1],
                                                                        v[:n + 1], scale))
        stream = c.stub.AttendStream(iter([pb.AttendRequest(
            items=[c.item("py-full", layer, n + 1, q[1], k[n + 1], v[n + 1])], request_id=9)]),
            timeout=60)
        responses = list(stream)
        assert len(responses) == 1 and responses[0].request_id == 9, responses
        check_close(f"layer {layer} AttendStream", responses[0].results[0].o,
                    dense_attention(q[1], k[:n + 2], v[:n + 2], scale))
    info = c.stub.GetSequence(pb.GetSequenceRequest(sequence_id="py-full"), timeout=10)
    assert list(info.layer_lengths) == [n + 2, 0, 0, n + 2], info.layer_lengths
    assert info.kv_bytes == 2 * (n + 2) * 2 * HKV * D * 4, info.kv_bytes
    c.stub.ReleaseSequence(pb.ReleaseSequenceRequest(sequence_id="py-full"), timeout=10)


def test_needle_is_selected(c, rng):
    """Default config. 8192 tokens: stages 1-2 keep every middle token, stage 3 keeps 256 of
    ~860 8-token blocks by their representative keys, so the needle is found by the pruning."""
    pb = c.pb
    c.create("py-needle", 4)
    n, rho = 8192, 0.98
    k = np.empty((n + 1, HKV, D), dtype=np.float32)
    k[0] = rng.standard_normal((HKV, D))
    noise = rng.standard_normal((n + 1, HKV, D)).astype(np.float32)
    for t in range(1, n + 1):  # slowly varying random walk per head: attention locality
        k[t] = rho * k[t - 1] + np.sqrt(1 - rho * rho) * noise[t]
    v = rng.standard_normal((n + 1, HKV, D)).astype(np.float32)
    q = (rng.standard_normal((HQ, D)) / np.sqrt(np.sqrt(D))).astype(np.float32)  # logit std ~1
    needle = 8 * 431  # token 3448: a block in the middle, past the sink, before the window
    group = HQ // HKV
    for g in range(HKV):
        direction = q[g * group:(g + 1) * group].sum(axis=0)
        direction /= np.linalg.norm(direction)
        # Scaled logit ~ 30 nats for every query head of the group, far above the rest (~N(0,1)).
        k[needle:needle + 8, g] = direction * 30 * np.sqrt(D) / np.linalg.norm(
            q[g * group:(g + 1) * group], axis=1).min()
    c.append("py-needle", 3, k[:n], v[:n])
    r = c.attend(c.item("py-needle", 3, n, q, k[n], v[n], blocks=True))
    assert len(r.selected_blocks) == 1, r.selected_blocks
    blocks = list(r.selected_blocks[0].blocks)
    print(f"  needle block {needle // 8}; {len(blocks)} blocks selected; "
          f"attended {r.attended_keys} keys of {n + 1}")
    assert blocks == sorted(blocks), "selected blocks are not ascending"
    assert needle // 8 in blocks, f"needle block {needle // 8} not selected: {blocks[:20]}..."
    assert r.attended_keys < n + 1, "the default config attended every key"
    c.stub.ReleaseSequence(pb.ReleaseSequenceRequest(sequence_id="py-needle"), timeout=10)


def test_errors(c, rng):
    pb = c.pb
    x = np.zeros((HKV, D), dtype=np.float32)
    qz = np.zeros((HQ, D), dtype=np.float32)
    try:
        c.attend(c.item("no-such-sequence", 0, 0, qz, x, x))
        raise AssertionError("Attend on an unknown sequence succeeded")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e
    c.create("py-err", 1)
    for bad, why in [(c.item("py-err", 0, 5, qz, x, x), "position gap"),
                     (c.item("py-err", 0, 0, qz[:1], x, x), "q too short"),
                     (c.item("py-err", 1, 0, qz, x, x), "layer out of range")]:
        try:
            c.attend(bad)
            raise AssertionError(f"Attend with a {why} succeeded")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (why, e)
            print(f"  {why}: INVALID_ARGUMENT: {e.details()}")
    info = c.stub.GetSequence(pb.GetSequenceRequest(sequence_id="py-err"), timeout=10)
    assert list(info.layer_lengths) == [0], f"a rejected request changed the sequence: {info}"
    c.stub.ReleaseSequence(pb.ReleaseSequenceRequest(sequence_id="py-err"), timeout=10)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server_bin", required=True)
    ap.add_argument("--proto_dir", required=True)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ihip-pyclient-")
    server = None
    try:
        how = generate_stubs(args.proto_dir, tmp)
        print(f"stubs generated with {how}")
        sys.path.insert(0, tmp)
        from ihip.v1 import attention_pb2 as pb, attention_pb2_grpc as pb_grpc
        server = Server(args.server_bin, os.path.join(tmp, "server.log"))
        print(f"ihip-server ready on port {server.port}")
        c = Client(pb, pb_grpc, server.port)
        assert c.health() == b"\x08\x01", "health check did not answer SERVING"
        rng = np.random.default_rng(1234)
        for test in (test_full_budget_equals_dense, test_needle_is_selected, test_errors):
            print(f"{test.__name__}:", flush=True)
            test(c, rng)
        listed = c.stub.ListSequences(pb.ListSequencesRequest(), timeout=10)
        assert not listed.sequences, f"sequences left: {[s.sequence_id for s in listed.sequences]}"
        print("PASSED")
        return 0
    except Exception:
        traceback.print_exc()
        if server is not None:
            print("ihip-server log:\n" + server.read_log())
        print("FAILED")
        return 1
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
