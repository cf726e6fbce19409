"""Batch Transform in SageMaker SDK v2 local mode, as a user runs it: a model.tar.gz with the
default tensor handler (a TorchScript model.pt, no user code) and a JSON-lines file of 10,000
records, SplitType Line, MultiRecord, AssembleWith Line. The SDK reads
/execution-parameters, posts mini-batches of whole lines up to MaxPayloadInMB, and joins
the answers: the output must hold one answer line per record, in order, each the model's
own answer for that record."""
import json
import tarfile

import numpy as np
import pytest

RECORDS = 10_000


@pytest.mark.timeout(600)
def test_a_jsonlines_batch_transform_answers_every_record_in_order(make_session, serve_image, role, tmp_path,
                                                                    free_port):
    import torch
    from sagemaker.model import Model

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    torch.jit.save(torch.jit.script(net), str(model_dir / "model.pt"))
    # local mode unpacks a file:// model.tar.gz beside itself and mounts that folder: readable by
    # the server's uid 1000
    artifact = tmp_path / "artifact"
    artifact.mkdir(mode=0o755)
    artifact.chmod(0o755)
    with tarfile.open(artifact / "model.tar.gz", "w:gz") as tar:
        tar.add(model_dir / "model.pt", arcname="model.pt")
    records = np.random.default_rng(0).random((RECORDS, 4)).round(5)
    inputs = tmp_path / "input"
    inputs.mkdir()
    (inputs / "records.jsonl").write_text("".join(json.dumps(r.tolist()) + "\n" for r in records))

    session = make_session(serving_port=free_port())
    model = Model(image_uri=serve_image, model_data=f"file://{artifact / 'model.tar.gz'}", role=role,
                  name="byoc-lm-transform", sagemaker_session=session)
    transformer = model.transformer(instance_count=1, instance_type="local", strategy="MultiRecord",
                                    assemble_with="Line", accept="application/jsonlines",
                                    output_path=f"file://{tmp_path / 'output'}")
    # local mode runs the whole job here; its logs would be asked of CloudWatch
    transformer.transform(f"file://{inputs}", content_type="application/jsonlines", split_type="Line", logs=False)

    lines = (tmp_path / "output" / "records.jsonl.out").read_text().splitlines()
    assert len(lines) == RECORDS
    want = net(torch.tensor(records, dtype=torch.float32)).detach().numpy()
    got = np.array([json.loads(line) for line in lines])
    assert got.shape == (RECORDS, 3) and np.allclose(got, want, atol=1e-5)
