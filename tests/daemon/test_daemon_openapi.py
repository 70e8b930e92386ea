"""The daemon's OpenAPI document matches its routes, and its schemas are valid."""

from __future__ import annotations

from pathlib import Path

from daemonproc import SPEC
from jsonschema import Draft202012Validator

from swarmhub.daemon.app import make_app
from swarmhub.daemon.manager import Manager
from swarmhub.daemon.state import StateDir
from swarmhub.settings import Settings


def test_every_route_is_documented_and_every_documented_route_exists(tmp_path: Path) -> None:
    app = make_app(Manager(StateDir(tmp_path), Settings(), download_dir=tmp_path), "t")
    routes = {(res.canonical, route.method.lower())
              for res in app.router.resources() for route in res if route.method != "HEAD"}
    documented = {(path, method) for path, ops in SPEC["paths"].items()
                  for method in ops if method != "parameters"}
    assert routes == documented
    assert SPEC["openapi"].startswith("3.1")


def test_every_schema_is_valid_json_schema() -> None:
    schemas = SPEC["components"]["schemas"]
    assert {"Torrent", "TorrentList", "Error", "Session"} <= set(schemas)
    for schema in schemas.values():
        Draft202012Validator.check_schema(schema)  # raises SchemaError naming the fault


def test_every_error_answer_is_the_error_object() -> None:
    for path, ops in SPEC["paths"].items():
        for method, op in ops.items():
            if method == "parameters":
                continue
            for status, resp in op["responses"].items():
                if int(status) < 400:
                    continue
                if "$ref" in resp:
                    resp = SPEC["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
                schema = resp["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (path, method, status)
