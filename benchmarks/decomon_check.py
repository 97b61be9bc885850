"""Evaluate decomon 0.2.1 as a bound-propagation engine for a TF/Keras 3 library.

Optional environment, outside the default install (it needs numpy<2 and keras<=3.2.1; see the JSON).
Usage (from a scratch folder holding its venvs; the committed result is benchmarks/results/decomon_check.json):
  nice -n 10 venv_k32/bin/python measure.py [--try-crown] [--repeats 5] [--out report.json]
  nice -n 10 venv/bin/python measure.py --compat-only --out compat_keras3.15.1.json

venv      : tensorflow 2.21.0 + keras 3.15.1 (+ numpy 1.26.4, ml_dtypes 0.5.4)  -> decomon cannot clone Conv2D
venv_k32  : tensorflow 2.16.2 + keras 3.2.1 + numpy 1.26.4 -> decomon works (main measurements)
"""
import argparse
import json
import os
import resource
import sys
import time
from importlib.metadata import version

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

import numpy as np  # noqa: E402 - the script imports after its environment and thread settings
import keras  # noqa: E402 - after KERAS_BACKEND is set

HERE = os.getcwd()  # outputs go to the folder it is run from
ap = argparse.ArgumentParser()
ap.add_argument("--compat-only", action="store_true")
ap.add_argument("--try-crown", action="store_true", help="actually call the CROWN models on the big model (allocates ~9 GB Toeplitz)")
ap.add_argument("--repeats", type=int, default=5)
ap.add_argument("--n-samples", type=int, default=200)
ap.add_argument("--out", default="report.json")
ap.add_argument("--hybrid-repeats", type=int, default=3)
ap.add_argument("--hybrid-chunk", type=int, default=16, help="forward-hybrid is memory hungry (~0.2 GB/example): evaluate in chunks")
args = ap.parse_args()

report = {"versions": {}, "notes": [
 "pip: decomon 0.2.1 Requires-Dist only keras>=3, numpy>=1.21, matplotlib -> pip accepted tensorflow 2.21.0 + keras 3.15.1 with no conflict, but decomon uses np.float_ (removed in NumPy 2) -> had to pin numpy 1.26.4 (and ml_dtypes 0.5.4, since ml_dtypes 0.7.0 needs numpy>=2).",
 "With keras 3.15.1 every method fails at clone(): AttributeError: property 'kernel' of 'DecomonConv2D' object has no setter (Conv2D.kernel is a read-only property in keras>=3.3; decomon assigns self.kernel). See compat_keras3.15.1.json. keras<=3.2.1 has no such property.",
 "Main measurements therefore use venv_k32: tensorflow 2.16.2 + keras 3.2.1 + numpy 1.26.4 + decomon 0.2.1.",
 "decomon requires a single flattened input: the (28,28,1) model is wrapped as Input((784,)) -> Reshape -> the same layer objects (shared variables).",
 "CROWN ('crown') and CROWN-IBP ('crown-forward-ibp') clone fine but every call OOMs: BackwardConv2D materialises the dense Toeplitz matrix of conv2 via an intermediate of shape [270400,32,16,16] float32 (~8.9 GB), recomputed on every call, independent of batch size (machine: 23 GB RAM shared).",
 "As the available linear-bound (CROWN-style, forward) method, 'forward-hybrid' (forward affine + IBP, tightened) was measured instead; it needs ~0.2 GB/example so it is run in chunks of 16 (get_range_box(batch_size=16)), with 3 timing repeats (each call ~34 s).",
 "forward-hybrid inside tf.function works only with a static batch dimension; with input_signature batch=None it fails in BatchedIdentityLike (int(None)); hence also no ExportArchive / SavedModel with a dynamic batch."
]}
for p in ["tensorflow", "keras", "decomon", "numpy", "ml_dtypes"]:
    try:
        report["versions"][p] = version(p)
    except Exception as e:  # noqa
        report["versions"][p] = f"n/a ({e})"
report["versions"]["python"] = sys.version.split()[0]
report["threads"] = {"intra_op": 1, "inter_op": 1}


def err(e):
    s = f"{type(e).__name__}: {e}"
    return s[:1500]


def save_report():
    with open(os.path.join(HERE, args.out), "w") as f:
        json.dump(report, f, indent=2, default=str)


try:
    import decomon
    from decomon.models import clone
except Exception as e:
    report["import_error"] = err(e)
    save_report()
    raise SystemExit(f"decomon import failed: {e}") from e

# ---------------------------------------------------------------- model / data
keras.utils.set_random_seed(0)
model = keras.Sequential(
    [
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 4, strides=2, padding="valid", activation="relu"),
        keras.layers.Conv2D(32, 4, strides=1, padding="valid", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(100, activation="relu"),
        keras.layers.Dense(10),
    ]
)
x = np.random.default_rng(0).uniform(0, 1, (64, 28, 28, 1)).astype("float32")
if not args.compat_only:
    model.save(os.path.join(HERE, "model.keras"))
    np.save(os.path.join(HERE, "x.npy"), x)
lo = np.clip(x - 0.1, 0, 1)
up = np.clip(x + 0.1, 0, 1)
B = x.shape[0]
D = 28 * 28


def flat_wrapper(m, in_shape):
    """decomon requires ONE flattened input: Input((prod,)) -> Reshape -> original layers (shared weights)."""
    inp = keras.Input((int(np.prod(in_shape)),))
    h = keras.layers.Reshape(in_shape)(inp)
    for layer in m.layers:
        h = layer(h)
    return keras.Model(inp, h)


flat = flat_wrapper(model, (28, 28, 1))
assert np.allclose(flat(x.reshape(B, -1)).numpy(), model(x).numpy(), atol=1e-5)
lo_f, up_f = lo.reshape(B, -1), up.reshape(B, -1)
z_np = np.stack([lo_f, up_f], 1)  # decomon box input: (batch, 2, n) = [lower, upper]

report["api"] = {
    "convert": "decomon.models.clone(keras_model, method=<str>, final_ibp=..., final_affine=..., shared=True) -> DecomonModel",
    "concretize": "decomon.get_range_box(decomon_model, x_min, x_max) -> (upper, lower) (numpy); "
    "also get_lower_box / get_upper_box",
    "decomon_model_input": "z of shape (batch, 2, n_flat) = stack([x_min, x_max], axis=1) (BoxDomain)",
    "method_strings": ["crown", "crown-forward-ibp", "crown-forward-affine", "crown-forward-hybrid",
                       "forward-ibp", "forward-affine", "forward-hybrid"],
    "requirement": "model must have exactly one flattened (batch, n) input -> wrapped with Input((784,)) + Reshape((28,28,1)) "
    "sharing the original layers",
}

METHODS = {"ibp": "forward-ibp", "crown": "crown", "crown-ibp": "crown-forward-ibp", "forward-hybrid": "forward-hybrid"}

# ---------------------------------------------------------------- compat only: just try to clone
if args.compat_only:
    report["clone"] = {}
    for m in METHODS.values():
        for shared in (True, False):
            try:
                dm = clone(flat, method=m, shared=shared)
                u, l = decomon.get_range_box(dm, lo_f[:2], up_f[:2])
                report["clone"][f"{m} shared={shared}"] = "ok"
            except Exception as e:
                report["clone"][f"{m} shared={shared}"] = err(e)
    save_report()
    print(json.dumps(report, indent=2))
    raise SystemExit(0)


def median_time(fn, repeats=args.repeats):
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)), [float(t) for t in ts]


# ---------------------------------------------------------------- forward reference timing
fwd_fn = tf.function(lambda t: model(t, training=False))
xt = tf.constant(x)
fwd_eager, _ = median_time(lambda: model(xt, training=False).numpy())
fwd_tf, _ = median_time(lambda: fwd_fn(xt).numpy())
report["timing"] = {"batch": B, "forward_eager_s": fwd_eager, "forward_tf_function_s": fwd_tf}
print("forward", fwd_eager, fwd_tf, flush=True)

# ---------------------------------------------------------------- soundness sampler
rng = np.random.default_rng(1)
logits_x = model.predict_on_batch(x)


def worst_violation(lower, upper, n=args.n_samples):
    """max over examples/logits/points of (lower - f) and (f - upper); <= 0 means sound."""
    worst = max(float(np.max(lower - logits_x)), float(np.max(logits_x - upper)))
    for _ in range(n):
        pts = rng.uniform(lo, up).astype("float32")
        f = fwd_fn(tf.constant(pts)).numpy()
        worst = max(worst, float(np.max(lower - f)), float(np.max(f - upper)))
    return worst


# ---------------------------------------------------------------- per method: bounds, soundness, timing
report["methods"] = {}
final_models = {}
for name, m in METHODS.items():
    rec = {"method_string": m}
    report["methods"][name] = rec
    t0 = time.perf_counter()
    try:
        dm = clone(flat, method=m)
        # same method, but final output mode = IBP -> outputs [upper, lower] directly (tight: min/max of both)
        dm_final = clone(flat, method=m, final_ibp=True, final_affine=False)
        rec["clone_s"] = time.perf_counter() - t0
        rec["clone"] = "ok"
        rec["weights_shared_with_original"] = all(any(v is w for w in model.weights) for v in dm.weights) and len(dm.weights) == len(model.weights)
        rec["n_decomon_weights"] = len(dm.weights)
    except Exception as e:
        rec["clone"] = err(e)
        print(name, "clone failed", rec["clone"][:300], flush=True)
        continue
    if m.startswith("crown") and not args.try_crown:
        rec["call"] = "skipped (run with --try-crown); see notes"
        continue
    try:
        t0 = time.perf_counter()
        u1, l1 = decomon.get_range_box(dm, lo_f[:1], up_f[:1])
        rec["first_call_batch1_s"] = time.perf_counter() - t0
    except Exception as e:
        rec["call"] = err(e)
        rec["maxrss_GB_after_failure"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        print(name, "call failed", rec["call"][:300], flush=True)
        continue
    chunk = args.hybrid_chunk if "affine" in m or "hybrid" in m else -1
    nz = B if chunk < 0 else chunk  # examples used for the tf.Tensor-path comparisons/timings
    rec["chunk"] = chunk
    upper, lower = decomon.get_range_box(dm, lo_f, up_f, batch_size=chunk)
    upper, lower = np.asarray(upper).reshape(B, 10), np.asarray(lower).reshape(B, 10)
    np.savez(os.path.join(HERE, f"bounds_{name}.npz"), lower=lower, upper=upper)
    rec["bounds_file"] = os.path.join(HERE, f"bounds_{name}.npz")
    rec["mean_width"] = float(np.mean(upper - lower))
    zt = tf.constant(z_np[:nz])
    uf, lf = [t.numpy() for t in dm_final(zt)]
    rec["final_ibp_model_matches_get_range_box_maxabs"] = float(max(np.abs(uf - upper[:nz]).max(), np.abs(lf - lower[:nz]).max()))
    rec["worst_violation"] = worst_violation(lower, upper)
    print(name, "width", rec["mean_width"], "viol", rec["worst_violation"], flush=True)
    reps = args.repeats if chunk < 0 else args.hybrid_repeats
    t_rb, ts_rb = median_time(lambda: decomon.get_range_box(dm, lo_f, up_f, batch_size=chunk), reps)
    fn = tf.function(lambda z: dm_final(z))
    t_tf, ts_tf = median_time(lambda: [t.numpy() for t in fn(zt)], reps)
    t_tf *= B / nz  # scaled to batch 64 when evaluated on a chunk
    rec["timing"] = {"repeats": reps, "tf_function_batch_evaluated": nz, "tf_function_time_scaled_to_batch_64": nz != B,
        "get_range_box_s": t_rb, "get_range_box_all_s": ts_rb, "ratio_get_range_box_to_forward_tf": t_rb / fwd_tf,
        "tf_function_call_s": t_tf, "tf_function_call_all_s": ts_tf, "ratio_tf_function_to_forward_tf": t_tf / fwd_tf,
    }
    rec["maxrss_GB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(name, rec["timing"], flush=True)
    final_models[name] = dm_final
    save_report()

# ---------------------------------------------------------------- (a) tf.function, (b) gradients, (c) export
report["checks"] = {}
for name, dm_final in final_models.items():
    c = {}
    report["checks"][name] = c
    # (a)
    try:
        @tf.function(input_signature=[tf.TensorSpec([None, 2, D], tf.float32)])
        def bound_fn(z):
            u, l = dm_final(z)
            return u, l
        nz = B if name == "ibp" else args.hybrid_chunk
        u, l = bound_fn(tf.constant(z_np[:nz]))
        ref = np.load(os.path.join(HERE, f"bounds_{name}.npz"))
        c["a_tf_function"] = "yes"
        c["a_batch"] = nz
        c["a_max_abs_diff_vs_saved"] = float(max(np.abs(u.numpy() - ref["upper"][:nz]).max(), np.abs(l.numpy() - ref["lower"][:nz]).max()))
    except Exception as e:
        c["a_tf_function"] = "no: " + err(e)
    # (b)
    try:
        nb = 64 if name == "ibp" else 8
        zb = tf.constant(z_np[:nb])
        with tf.GradientTape() as tape:
            u, l = dm_final(zb)
            loss = tf.reduce_sum(l)
        grads = tape.gradient(loss, model.trainable_weights)
        info = [(v.path if hasattr(v, "path") else v.name, None if g is None else float(tf.reduce_sum(tf.abs(g)))) for v, g in zip(model.trainable_weights, grads)]
        ok = all(g is not None for _, g in info) and all(g > 0 for _, g in info)
        c["b_gradients_to_original_weights"] = "yes" if ok else "no"
        c["b_grad_abs_sums"] = info
        c["b_batch"] = nb
        # also inside tf.function (training-step style)
        @tf.function
        def step(z):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(dm_final(z)[1])
            return tape.gradient(loss, model.trainable_weights)
        g2 = step(zb)
        c["b_grads_in_tf_function_match_eager"] = bool(all(np.allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5) for a, b in zip(grads, g2)))
    except Exception as e:
        c["b_gradients_to_original_weights"] = "no: " + err(e)
    # (c)
    path = os.path.join(HERE, f"export_{name}")
    try:
        arch = keras.export.ExportArchive()
        arch.track(dm_final)
        arch.add_endpoint(name="bounds", fn=lambda z: dm_final(z), input_signature=[tf.TensorSpec([None, 2, D], tf.float32)])
        arch.write_out(path)
        re = tf.saved_model.load(path)
        u, l = re.bounds(tf.constant(z_np[:nz]))
        ref = np.load(os.path.join(HERE, f"bounds_{name}.npz"))
        d = float(max(np.abs(u.numpy() - ref["upper"][:nz]).max(), np.abs(l.numpy() - ref["lower"][:nz]).max()))
        c["c_export_archive"] = "yes" if d < 1e-4 else f"no: reloaded bounds differ by {d}"
        c["c_max_abs_diff"] = d
        c["c_path"] = path
    except Exception as e:
        c["c_export_archive"] = "no: " + err(e)
        try:
            mod = tf.Module()
            mod.dm = dm_final
            mod.bounds = tf.function(lambda z: dm_final(z), input_signature=[tf.TensorSpec([None, 2, D], tf.float32)])
            tf.saved_model.save(mod, path + "_tfsm")
            re = tf.saved_model.load(path + "_tfsm")
            u, l = re.bounds(tf.constant(z_np[:nz]))
            ref = np.load(os.path.join(HERE, f"bounds_{name}.npz"))
            d = float(max(np.abs(u.numpy() - ref["upper"][:nz]).max(), np.abs(l.numpy() - ref["lower"][:nz]).max()))
            c["c_tf_saved_model"] = "yes" if d < 1e-4 else f"no: differ by {d}"
        except Exception as e2:
            c["c_tf_saved_model"] = "no: " + err(e2)
    print(name, c, flush=True)
    save_report()

# ---------------------------------------------------------------- (d) tiny models with MaxPool / BN / Add
keras.utils.set_random_seed(0)


def tiny_maxpool():
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                             keras.layers.MaxPooling2D(2), keras.layers.Flatten(), keras.layers.Dense(3)])


def tiny_bn():
    m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(),
                          keras.layers.Activation("relu"), keras.layers.Flatten(), keras.layers.Dense(3)])
    bn = m.layers[1]
    r = np.random.default_rng(2)
    bn.set_weights([r.uniform(0.5, 1.5, 4).astype("float32"), r.normal(0, .3, 4).astype("float32"),
                    r.normal(0, .3, 4).astype("float32"), r.uniform(0.5, 2.0, 4).astype("float32")])
    return m


def tiny_add():
    # built directly on a flat input (decomon needs one flat input; avoids a nested model)
    inp = keras.Input((64,))
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(keras.layers.Reshape((8, 8, 1))(inp))
    b = keras.layers.Conv2D(4, 3, padding="same")(a)
    h = keras.layers.Activation("relu")(keras.layers.Add()([a, b]))
    out = keras.layers.Dense(3)(keras.layers.Flatten()(h))
    return keras.Model(inp, out)


def flat_functional(m, in_shape):
    if isinstance(m, keras.Sequential):
        return flat_wrapper(m, in_shape)
    return m  # already flat-input functional


report["d_tiny_models"] = {}
xs = np.random.default_rng(3).uniform(0, 1, (8, 64)).astype("float32")
tl, tu = np.clip(xs - 0.1, 0, 1), np.clip(xs + 0.1, 0, 1)
for tname, ctor in [("MaxPooling2D", tiny_maxpool), ("BatchNormalization_inference", tiny_bn), ("Add_residual", tiny_add)]:
    tm = ctor()
    fm = flat_functional(tm, (8, 8, 1))
    res = {}
    for m in ["forward-ibp", "crown", "crown-forward-ibp", "forward-hybrid"]:
        try:
            dm = clone(fm, method=m)
            uu, ll = decomon.get_range_box(dm, tl, tu)
            worst = -np.inf
            for _ in range(args.n_samples):
                f = fm.predict_on_batch(rng.uniform(tl, tu).astype("float32"))
                worst = max(worst, float(np.max(ll - f)), float(np.max(f - uu)))
            res[m] = {"ok": "yes", "worst_violation": worst, "mean_width": float(np.mean(uu - ll))}
        except Exception as e:
            res[m] = {"ok": "no: " + err(e)}
    report["d_tiny_models"][tname] = res
    print(tname, res, flush=True)
if os.path.exists(os.path.join(HERE, "compat_keras3.15.1.json")):
    report["compat_keras_3_15_1"] = json.load(open(os.path.join(HERE, "compat_keras3.15.1.json")))
save_report()
print("done; maxrss GB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)
