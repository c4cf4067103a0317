"""TLS on the public listener and mutual TLS from the gateway to its workers, with a CA
and certificates made by openssl for the test."""

import shutil
import subprocess
import time

import grpc
import pytest
from conftest import pb
from grpc_health.v1 import health_pb2, health_pb2_grpc

c, w, wg, t, tg = pb()


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.fail("openssl is missing (Debian's openssl package)")
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=tokenfleet-test-ca", cwd=d)
    for name in ("server", "client"):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=d)
        ext = d / f"{name}.ext"
        usage = "serverAuth" if name == "server" else "clientAuth"
        ext.write_text(f"subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", f"{name}.pem",
                "-days", "2", "-extfile", str(ext), cwd=d)
    return d


def test_public_tls_and_mtls_to_workers(stack, tiny_model, pki, tmp_path):
    wcfg = tmp_path / "worker.toml"
    wcfg.write_text(f'[tls]\ncert = "{pki / "server.pem"}"\nkey = "{pki / "server.key"}"\nclient_ca = "{pki / "ca.pem"}"\n')
    wk = stack.worker(tiny_model, "--config", str(wcfg), "--kv-blocks", "128")
    # The worker speaks only TLS and requires a client certificate.
    creds = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes(), private_key=(pki / "client.key").read_bytes(),
                                         certificate_chain=(pki / "client.pem").read_bytes())
    deadline = time.time() + 60
    while True:
        try:
            ch = grpc.secure_channel(wk.addr, creds, options=[("grpc.ssl_target_name_override", "localhost")])
            if health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                break
        except grpc.RpcError:
            pass
        assert time.time() < deadline and wk.alive(), wk.logs()
        time.sleep(0.2)
    no_cert = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes())
    with pytest.raises(grpc.RpcError):
        ch = grpc.secure_channel(wk.addr, no_cert, options=[("grpc.ssl_target_name_override", "localhost")])
        wg.WorkerStub(ch).Info(w.InfoRequest(), timeout=3)

    gcfg = tmp_path / "gateway.toml"
    gcfg.write_text(
        f'[tls]\ncert = "{pki / "server.pem"}"\nkey = "{pki / "server.key"}"\n'
        f'[worker_tls]\nca = "{pki / "ca.pem"}"\ncert = "{pki / "client.pem"}"\nkey = "{pki / "client.key"}"\ndomain = "localhost"\n'
    )
    g = stack.gateway([wk], "--config", str(gcfg))
    server_creds = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes())
    ch = grpc.secure_channel(g.addr, server_creds, options=[("grpc.ssl_target_name_override", "localhost")])
    s = tg.TextGenerationStub(ch)
    deadline = time.time() + 60
    while True:
        try:
            if s.ModelInfo(t.ModelInfoRequest(), timeout=2).healthy_workers == 1:
                break
        except grpc.RpcError:
            pass
        assert time.time() < deadline and g.alive(), g.logs()
        time.sleep(0.2)
    r = s.Generate(t.GenerateRequest(tokens=c.TokenIds(ids=[128000, 1, 2]), sampling=c.SamplingParams(temperature=0),
                                     stopping=c.StoppingCriteria(max_new_tokens=4, ignore_eos=True)))
    assert len(r.token_ids) == 4
    # Plaintext to the TLS listener does not work.
    with pytest.raises(grpc.RpcError):
        tg.TextGenerationStub(grpc.insecure_channel(g.addr)).ModelInfo(t.ModelInfoRequest(), timeout=3)
