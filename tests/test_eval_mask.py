"""``acbmse eval --mask``: the report of the kept elements alone, whatever the chunking."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from eval_reference import assert_close, reference_report

from acbmse_cli.cli import main
from acbmse_cli.errors import InputError
from acbmse_cli.evaluate import EvalOptions, evaluate


def data(shape=(6, 5, 7), seed=0):
    """A sparse pair and a mask of dead pixels; NaN and Inf wherever the mask leaves elements out."""
    rng = np.random.default_rng(seed)
    target = np.where(rng.random(shape) < 0.15, rng.uniform(1, 40, shape), 0.0)
    pred = target + rng.normal(0, 2, shape)
    keep = rng.random(shape) > 0.2
    keep[:, 2, :] = False  # a dead row in every frame
    pred[~keep] = rng.choice([np.nan, np.inf, -np.inf, 1e30], size=int((~keep).sum()))
    target[~keep] = rng.choice([np.nan, np.inf, 7.0], size=int((~keep).sum()))
    return pred.astype(np.float32), target.astype(np.float32), keep


def write(tmp_path: Path, **arrays: np.ndarray) -> dict[str, Path]:
    paths = {}
    for name, array in arrays.items():
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], array)
    return paths


def worst_samples(pred, target, keep, weights, k, *, threshold=0.0, labels=None):
    """The k samples with the largest ACB-MSE of their kept elements, in float64 numpy."""
    rows = []
    for i in range(pred.shape[0]):
        p, t = pred[i][keep[i]].astype(np.float64), target[i][keep[i]].astype(np.float64)
        cls = (np.abs(t) > threshold).astype(int) if labels is None else labels[i][keep[i]]
        mses = [
            float(np.mean((p[cls == c] - t[cls == c]) ** 2)) if (cls == c).any() else None
            for c in range(len(weights))
        ]
        loss = sum(w * m for w, m in zip(weights, mses, strict=True) if m is not None)
        rows.append({"index": i, "acb_mse": float(loss), "class_mse": mses})
    rows.sort(key=lambda r: (-r["acb_mse"], r["index"]))
    return rows[:k]


@pytest.mark.parametrize("labelled", [False, True])
@pytest.mark.parametrize("per_sample", [False, True])
def test_the_report_is_that_of_the_kept_elements(tmp_path, labelled, per_sample):
    pred, target, keep = data()
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=pred.shape) if labelled else None
    if labelled:
        labels[~keep] = 99  # out of range where the mask leaves them out: never read as a class
    paths = write(tmp_path, p=pred, t=target, m=keep, **({"lab": labels} if labelled else {}))
    weights = (0.5, 1.0, 4.0) if labelled else (1.0, 2.0)
    options = {"labels": paths["lab"], "class_weights": weights} if labelled else {"hit_weight": 2.0}
    if not labelled:
        options["detect_threshold"] = 3.0
    expected = reference_report(
        pred[keep],
        target[keep],
        weights=weights,
        labels=None if labels is None else labels[keep],
        detect_threshold=None if labelled else 3.0,
        paths=(paths["p"], paths["t"]),
    )
    expected["masked"] = int((~keep).sum())
    if per_sample:
        names = [c["name"] for c in expected["classes"]]
        expected["worst_samples"] = [
            {**row, "class_mse": dict(zip(names, row["class_mse"], strict=True))}
            for row in worst_samples(pred, target, keep, weights, 4, labels=labels)
        ]
    for chunk in (None, 1, 6, 35, 36, 50):
        result = evaluate(
            paths["p"],
            paths["t"],
            EvalOptions(
                mask=paths["m"],
                per_sample=per_sample,
                top=4 if per_sample else None,
                chunk_elements=chunk,
                **options,
            ),
        )
        assert_close(result.to_dict(), expected, rel=1e-9)


def test_nan_policy_omit_counts_only_the_kept_nans(tmp_path):
    pred, target, keep = data(seed=2)
    pred[0, 0, 0], keep[0, 0, 0] = np.nan, True  # one NaN that the mask keeps
    paths = write(tmp_path, p=pred, t=target, m=keep)
    with pytest.raises(InputError, match="NaN"):
        evaluate(paths["p"], paths["t"], EvalOptions(mask=paths["m"]))
    result = evaluate(
        paths["p"], paths["t"], EvalOptions(mask=paths["m"], nan_policy="omit", chunk_elements=17)
    )
    both = keep & np.isfinite(pred) & np.isfinite(target)
    expected = reference_report(pred[both], target[both], paths=(paths["p"], paths["t"]))
    expected |= {"omitted": 1, "masked": int((~keep).sum())}
    assert_close(result.to_dict(), expected)


def test_cli_mask_in_any_numeric_format(tmp_path, capsys):
    pred, target, keep = data(seed=3)
    paths = write(tmp_path, p=pred, t=target, m=keep.astype(np.uint8), f=np.where(keep, 2.5, 0.0))
    expected = reference_report(pred[keep], target[keep], paths=(paths["p"], paths["t"]))
    for mask in (paths["m"], paths["f"]):
        with pytest.raises(SystemExit) as done:
            main(["eval", str(paths["p"]), str(paths["t"]), "--mask", str(mask), "--format", "json"])
        out, err = capsys.readouterr()
        assert done.value.code == 0, err
        got = json.loads(out)
        assert got["masked"] == int((~keep).sum()) and got["run"]["mask"] == str(mask)
        assert_close(got, {**expected, "masked": got["masked"]})
    with pytest.raises(SystemExit):
        main(["eval", str(paths["p"]), str(paths["t"]), "--mask", str(paths["m"])])
    out, _ = capsys.readouterr()
    assert f"({int((~keep).sum()):,} elements left out by --mask)" in out


def test_cli_refuses_a_mask_of_another_shape_and_a_mask_of_nothing(tmp_path, capsys):
    pred, target, keep = data(seed=4)
    paths = write(tmp_path, p=pred, t=target, m=keep[:3], z=np.zeros(keep.shape, dtype=bool))
    with pytest.raises(SystemExit) as done:
        main(["eval", str(paths["p"]), str(paths["t"]), "--mask", str(paths["m"])])
    assert done.value.code == 2
    assert "the mask has shape (3, 5, 7)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["eval", str(paths["p"]), str(paths["t"]), "--mask", str(paths["z"])])
    assert done.value.code == 2
    assert f"--mask left out {keep.size:,} elements" in capsys.readouterr().err


def test_the_default_curve_grid_ignores_a_hot_pixel_under_the_mask(tmp_path):
    pred, target, keep = data(seed=5)
    target = np.where(keep, target, 0.0).astype(np.float32)
    hot = target.copy()
    hot[~keep] = 5000.0  # a hot pixel that always fires, where the mask leaves it out
    paths = write(tmp_path, p=pred, t=target, hot=hot, m=keep)
    curves = [
        evaluate(paths["p"], paths[t], EvalOptions(mask=paths["m"], detect_curve=True)).to_dict()
        for t in ("t", "hot")
    ]
    assert curves[1]["detection_curve"]["threshold"][-1] < 100
    assert_close(curves[1]["detection_curve"], curves[0]["detection_curve"], rel=0, abs_=0)


def test_cli_mask_key_picks_the_array_of_an_npz(tmp_path, capsys):
    pred, target, keep = data(seed=6)
    paths = write(tmp_path, p=pred, t=target)
    np.savez(tmp_path / "masks.npz", other=np.ones(keep.shape, dtype=bool), alive=keep)
    expected = reference_report(pred[keep], target[keep], paths=(paths["p"], paths["t"]))
    args = [
        "eval",
        str(paths["p"]),
        str(paths["t"]),
        "--mask",
        str(tmp_path / "masks.npz"),
        "--format",
        "json",
    ]
    with pytest.raises(SystemExit) as done:
        main([*args, "--mask-key", "alive"])
    out, err = capsys.readouterr()
    assert done.value.code == 0, err
    assert_close(json.loads(out), {**expected, "masked": int((~keep).sum())})
    with pytest.raises(SystemExit) as done:
        main(["eval", str(paths["p"]), str(paths["t"]), "--mask-key", "alive"])
    assert done.value.code == 2 and "--mask-key needs --mask" in capsys.readouterr().err
