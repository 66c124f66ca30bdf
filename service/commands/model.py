"""``sonoguide model keygen|pack|verify|install|list|activate|rollback|remove``: field model updates.

Vendor side: ``keygen`` makes an Ed25519 key pair, ``pack`` signs a model folder into a bundle with
golden vectors. Device side: the others work on the store and the trusted keys named by the config's
``[model] store`` and ``keys`` (or ``--store`` / ``--keys``). With the daemon running, prefer its MQTT
commands (``cmd/install_model``, ``cmd/activate_model``, ``cmd/rollback_model``): they swap the model
live; ``activate`` and ``rollback`` here move the pointer the daemon reads at its next start.
Every subcommand takes ``--json``; exit status 1 when refused, with the reason. docs/model-updates.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

SUBCOMMANDS = ("keygen", "pack", "verify", "install", "list", "activate", "rollback", "remove")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the result as one JSON object")
    common.add_argument(
        "--config", type=Path, default=None, help="config (default /etc/sonoguide/config.toml)"
    )
    common.add_argument(
        "--store", type=Path, default=None, help="model store folder (default: [model] store)"
    )
    common.add_argument("--keys", type=Path, default=None, help="trusted keys folder (default: [model] keys)")
    sub = parser.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    p = sub.add_parser("keygen", parents=[common], help="vendor: a new Ed25519 signing key pair")
    p.add_argument("name", help="key name, e.g. vendor-2027 (files NAME.key and NAME.pub.json)")
    p.add_argument("--out", type=Path, default=Path("."), help="folder for the key files (default .)")
    p.add_argument("--valid-days", type=int, default=730, help="how long devices accept the key")
    p = sub.add_parser("pack", parents=[common], help="vendor: sign a model folder into a bundle")
    p.add_argument("model_dir", type=Path, help="model version folder (manifest.json, ONNX files, card)")
    p.add_argument("--key", type=Path, required=True, help="private key (NAME.key from keygen)")
    p.add_argument("-o", "--out", type=Path, required=True, help="bundle file to write")
    p.add_argument("--valid-days", type=int, default=365, help="signature validity (default 365 days)")
    p = sub.add_parser(
        "verify", parents=[common], help="check a bundle's signature, hashes, contract, golden vectors"
    )
    p.add_argument("bundle", type=Path)
    p = sub.add_parser("install", parents=[common], help="verify a bundle and add it to the store")
    p.add_argument("bundle", type=Path)
    p.add_argument(
        "--allow-downgrade", action="store_true", help="accept a version older than the active one"
    )
    sub.add_parser("list", parents=[common], help="the installed versions, which is active, each verified")
    p = sub.add_parser("activate", parents=[common], help="make a version the one the daemon starts with")
    p.add_argument("version", help="an installed version, or 'factory'")
    p.add_argument(
        "--allow-downgrade", action="store_true", help="accept a version older than the active one"
    )
    sub.add_parser("rollback", parents=[common], help="back to the previous version")
    p = sub.add_parser("remove", parents=[common], help="delete an installed version (not the active one)")
    p.add_argument("version")


def run(args: argparse.Namespace) -> int:
    from service.model_store import ModelStoreError

    try:
        result = _dispatch(args)
    except ModelStoreError as exc:
        return _report(args, {"ok": False, "error": str(exc)}, f"refused: {exc}")
    text = result.pop("_text", "")
    return _report(args, {"ok": True, **result}, text)


def _report(args: argparse.Namespace, body: dict[str, Any], text: str) -> int:
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        print(text, file=sys.stdout if body["ok"] else sys.stderr)
    return 0 if body["ok"] else 1


def _model_config(args: argparse.Namespace) -> Any:
    from service.daemon.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
    from service.model_store import ModelStoreError

    path = args.config or DEFAULT_CONFIG_PATH
    try:
        return load_config(path if args.config or path.is_file() else None, env={}).model
    except ConfigError as exc:
        raise ModelStoreError(str(exc)) from None


def open_store(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(store, trust, model config) from the config and the command line."""
    from service import __version__
    from service.daemon.mqtt_commands import PRESET_SETTINGS
    from service.daemon.onnx_model import shipped_model_dir
    from service.model_store.keys import Trust
    from service.model_store.store import Factory, ModelStore

    config = _model_config(args)
    store = ModelStore(
        args.store or Path(config.store),
        Factory.from_folder(shipped_model_dir()),
        __version__,
        tuple(PRESET_SETTINGS),
    )
    return store, Trust.load(args.keys or Path(config.keys)), config


def golden_loader(config: Any) -> Any:
    """Golden vectors on this machine's execution providers (the config's), as the daemon runs them."""
    from service.daemon.onnx_model import ModelLoadError, OnnxModel
    from service.model_store import ModelStoreError

    def load(folder: Path) -> tuple[Any, str]:
        try:
            model = OnnxModel(folder, tuple(config.providers), config.engine_cache or None)
        except ModelLoadError as exc:
            raise ModelStoreError(f"the model does not load: {exc}") from None
        return model.golden_run, model.provider

    return load


def _dispatch(args: argparse.Namespace) -> dict[str, Any]:
    from service.model_store import ModelStoreError

    cmd = args.model_command
    if cmd == "keygen":
        from service.model_store.keys import format_time, keygen

        key = keygen(args.out, args.name, args.valid_days)
        return {"key_id": key.key_id, "public": key.source, "private": str(args.out / f"{args.name}.key"),
                "expires": format_time(key.expires),
                "_text": f"key {key.key_id}: private {args.out / (args.name + '.key')} (keep it off devices), "
                         f"public {key.source} (copy to each device's model-keys folder)"}  # fmt: skip
    if cmd == "pack":
        return pack_folder(args.model_dir, args.key, args.out, args.valid_days)
    store, trust, config = open_store(args)
    if cmd == "verify":
        return verify_bundle(args.bundle, store, trust, config)
    if cmd == "install":
        result = store.install(args.bundle, trust, golden_loader(config), args.allow_downgrade,
                               progress=None if args.json else lambda m: print(f"  {m}"))  # fmt: skip
        return {**result, "_text": f"installed {result['version']} (activate it with `sonoguide model activate "
                                   f"{result['version']}` or cmd/activate_model)"}  # fmt: skip
    if cmd == "list":
        entries = [e.as_dict() for e in store.entries(trust)]
        lines = [
            f"{'*' if e['active'] else ' '} {e['version']:<10} {e['where']:<8}"
            + (" previous" if e["previous"] else "")
            + ("" if e["ok"] else f"  BROKEN: {e['problem']}")
            for e in entries
        ]
        return {"store": str(store.root), "versions": entries, "state": store.read_state().as_dict(),
                "_text": "\n".join(lines)}  # fmt: skip
    if cmd == "activate":
        state = store.activate(args.version, trust, args.allow_downgrade)
        return _state(store, state, "active")
    if cmd == "rollback":
        return _state(store, store.rollback(trust), "rolled back to")
    if cmd == "remove":
        store.remove(args.version)
        return {"removed": args.version, "_text": f"removed {args.version}"}
    raise ModelStoreError(f"unknown subcommand {cmd}")


def _state(store: Any, state: Any, verb: str) -> dict[str, Any]:
    version = store.version_of(state.active)
    return {**state.as_dict(), "active_version": version,
            "_text": f"{verb} {version} (takes effect when the daemon starts; live: cmd/activate_model)"}  # fmt: skip


def verify_bundle(bundle: Path, store: Any, trust: Any, config: Any) -> dict[str, Any]:
    """Everything install checks, in a temporary folder; the store is not touched."""
    import tempfile

    from service.model_store.bundle import unpack
    from service.model_store.golden import check_golden

    with tempfile.TemporaryDirectory(prefix="sonoguide-verify-") as tmp:
        verified = unpack(bundle, Path(tmp), trust)
        store._check_model(Path(tmp), verified)
        runner, where = golden_loader(config)(Path(tmp) / "model")
        report = check_golden(json.loads((Path(tmp) / "golden.json").read_text()), runner, where)
    return {"name": verified.name, "version": verified.version, "key_id": verified.key_id,
            "expires": verified.manifest["signature"]["expires"], "golden": report,
            "_text": f"{bundle}: {verified.name} {verified.version}, signed by {verified.key_id} "
                     f"({verified.key_owner}) until {verified.manifest['signature']['expires']}; "
                     f"golden vectors within tolerance on {where}"}  # fmt: skip


def pack_folder(model_dir: Path, key_path: Path, out: Path, valid_days: int) -> dict[str, Any]:
    """Bundle a model folder: its files (hashes checked), golden vectors from its INT8 model and FP32
    reference on the CPU, signed with the vendor key."""
    from service.daemon.onnx_model import ModelLoadError, OnnxModel, read_manifest
    from service.model_store import ModelStoreError
    from service.model_store.bundle import pack
    from service.model_store.golden import golden_inputs, make_golden
    from service.model_store.keys import load_private_key

    private = load_private_key(key_path)
    try:
        manifest = read_manifest(model_dir)
        int8 = OnnxModel(model_dir, ("cpu",))
        ref = manifest.get("reference_file")
        fp32 = OnnxModel(model_dir, ("cpu",), model_file=ref) if ref else int8
    except ModelLoadError as exc:
        raise ModelStoreError(str(exc)) from None
    golden = make_golden(golden_inputs(), int8.golden_run, fp32.golden_run)
    files = {f"model/{n}": (model_dir / n).read_bytes() for n in [*manifest["files"], "manifest.json"]}
    files["golden.json"] = json.dumps(golden, indent=1).encode()
    meta = {"name": manifest["name"], "version": manifest["version"],
            "min_service_version": manifest.get("min_service_version", "0")}  # fmt: skip
    signed = pack(files, private, out, meta, valid_days)
    size = out.stat().st_size
    return {"bundle": str(out), "name": meta["name"], "version": meta["version"], "bytes": size,
            "key_id": signed["signature"]["key_id"], "expires": signed["signature"]["expires"],
            "tolerance": golden["tolerance"],
            "_text": f"wrote {out} ({size / 1e6:.1f} MB): {meta['name']} {meta['version']}, "
                     f"key {signed['signature']['key_id']}, expires {signed['signature']['expires']}"}  # fmt: skip
