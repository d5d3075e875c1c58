"""Reading job and service spec files: the I/O in front of the pure spec cores.

``load_job_spec`` / ``load_service_spec`` check the file (extension, existence, size bound,
UTF-8), parse it (``fuxi.core.specparse.parse_text``) and hand the document to the pure
``spec_from_dict`` / ``service_spec_from_dict``, which override, substitute and validate.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fuxi.core.service_spec import ServiceSpec, service_spec_from_dict
from fuxi.core.spec import SPEC_SUFFIXES, JobSpec, spec_bytes_max, spec_from_dict
from fuxi.core.specparse import parse_text
from fuxi.errors import BadInput, LimitExceeded, SpecError

__all__ = ["load_job_spec", "load_service_spec"]


def load_job_spec(path: str | Path, overrides: Sequence[str] = (),
                  check_functions: bool = True) -> JobSpec:
    """Read, override, substitute and validate a YAML/JSON job spec file."""
    path = Path(path)
    source = str(path)
    suffix = path.suffix.lower()
    if suffix not in SPEC_SUFFIXES:
        raise BadInput(f"job spec {source}: got extension {path.suffix or '(none)'!r}, expected one of "
                       + ", ".join(SPEC_SUFFIXES))
    if not path.exists():
        raise BadInput(f"job spec {source}: file not found")
    if not path.is_file():
        raise BadInput(f"job spec {source}: not a regular file")
    with path.open("rb") as f:
        raw = f.read(spec_bytes_max + 1)  # read one byte more than allowed to detect overflow
    if len(raw) > spec_bytes_max:
        raise LimitExceeded(f"job spec {source}: larger than spec_bytes_max={spec_bytes_max} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})"], source=source) from exc
    doc = parse_text(text, suffix, source)
    return spec_from_dict(doc, overrides, source=source, check_functions=check_functions)


def load_service_spec(path: str | Path, overrides: Sequence[str] = (),
                      check_class: bool = True) -> ServiceSpec:
    """Read, override and validate a YAML/JSON service spec file."""
    path = Path(path)
    source = str(path)
    if path.suffix.lower() not in SPEC_SUFFIXES:
        raise BadInput(f"service spec {source}: got extension {path.suffix or '(none)'!r}, "
                       f"expected one of " + ", ".join(SPEC_SUFFIXES))
    if not path.is_file():
        raise BadInput(f"service spec {source}: file not found")
    raw = path.read_bytes()[:spec_bytes_max + 1]
    if len(raw) > spec_bytes_max:
        raise LimitExceeded(f"service spec {source}: larger than spec_bytes_max="
                            f"{spec_bytes_max} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})"],
                        source=source, kind="service") from None
    try:
        doc = parse_text(text, path.suffix.lower(), source)
    except SpecError as e:
        raise SpecError(e.problems, source, kind="service") from None
    return service_spec_from_dict(doc, overrides, source, check_class)
