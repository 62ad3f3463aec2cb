"""Write strict JSON Schemas of the Prometheus Operator kinds from cloudcoil's models (see SOURCE.md)."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

from cloudcoil.models.prometheus_operator import v1  # type: ignore[import-not-found]

KINDS = ("PodMonitor", "ServiceMonitor", "PrometheusRule")
PACKAGE = "cloudcoil.models.prometheus_operator"


def strict(node: Any) -> Any:
    if isinstance(node, dict):
        node.pop("description", None)
        node.pop("title", None)
        if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            strict(value)
    elif isinstance(node, list):
        for value in node:
            strict(value)
    return node


def main() -> None:
    out = Path(__file__).parent
    for kind in KINDS:
        schema = strict(getattr(v1, kind).model_json_schema(by_alias=True, mode="validation"))
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$comment"] = (
            f"monitoring.coreos.com/v1 {kind}: generated from the pydantic models of the PyPI package "
            f"cloudcoil-models-prometheus-operator {version(PACKAGE)} (prometheus-operator's CRDs), descriptions "
            "dropped, additionalProperties false on every object with declared properties (strict, like "
            "`kubectl apply --validate=strict`). See SOURCE.md."
        )
        path = out / f"{kind.lower()}.json"
        path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
