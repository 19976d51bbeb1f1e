"""The command line end to end in a temporary folder: train (quick), evaluate, help, errors."""
import json

import pytest

from nplvm.cli import known_kinds, main


def test_train_then_evaluate_quick(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "vae", "--epochs", "2", "--quick", "--hidden", "32", "--latent", "4",
               "--batch-size", "100", "--out", str(out), "--no-progress"])
    assert rc == 0
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    for r in lines:
        assert {"train_loss", "valid_nelbo", "seconds"} <= set(r)
        assert 50 < r["valid_nelbo"] < 800                       # nats per example, 784 pixels
    assert lines[1]["train_loss"] < lines[0]["train_loss"]
    assert (out / "checkpoint.npz").is_file() and (out / "run.json").is_file()

    rc = main(["evaluate", "--checkpoint", str(out), "--quick", "--K", "20", "--n", "50"])
    assert rc == 0
    res = json.loads((out / "evaluation.json").read_text())
    assert res["n"] == 50 and res["K"] == 20 and res["kind"] == "vae"
    # IS with K = 20 is a tighter bound than the 1-sample ELBO (allow sampling noise)
    assert res["nll"] < res["nelbo"] + 1.0
    assert "NLL, IS with K = 20" in capsys.readouterr().out


def test_train_iwae_kind_and_k_flag(tmp_path):
    out = tmp_path / "iwae"
    rc = main(["train", "iwae", "--epochs", "1", "--quick", "--hidden", "16", "--latent", "3",
               "--k", "3", "--out", str(out), "--no-progress"])
    assert rc == 0
    cfg = json.loads((out / "run.json").read_text())["config"]
    assert cfg["k"] == 3 and cfg["hidden"] == [16]


def test_help_lists_common_and_model_flags(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "vae", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--data", "--epochs", "--batch-size", "--lr", "--seed", "--out", "--quick",
                 "--hidden", "--latent", "--activation", "--k", "--beta"):
        assert flag in text
    assert "vae" in known_kinds() and "iwae" in known_kinds()
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "--K" in capsys.readouterr().out


def test_unknown_model_and_missing_data_are_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "nosuchmodel"])
    assert e.value.code == 2
    assert "unknown model kind" in capsys.readouterr().err
    rc = main(["train", "vae", "--quick", "--epochs", "1", "--data", str(tmp_path / "absent.npz"),
               "--out", str(tmp_path / "x")])
    assert rc == 2
    assert "absent.npz" in capsys.readouterr().err
    rc = main(["evaluate", "--checkpoint", str(tmp_path / "nothing")])
    assert rc == 2


def test_flags_come_from_the_constructor_and_bad_values_are_clear_errors(tmp_path, capsys):
    from nplvm.cli import model_parameters
    from nplvm.models import get_class
    for kind in ("vae", "gmvae", "vrnn"):
        names = [n for n, _ in model_parameters(get_class(kind))]
        assert "x_dim" not in names and "seed" not in names and "dtype" in names
    with pytest.raises(SystemExit) as e:
        main(["train", "vae", "--hidden", "64,,64"])
    assert e.value.code == 2 and "comma-separated integers" in capsys.readouterr().err
    rc = main(["train", "vae", "--quick", "--latent", "0", "--out", str(tmp_path / "bad")])
    assert rc == 2 and "latent" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()                      # nothing written before validation
