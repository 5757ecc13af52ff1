"""Weights from the Hugging Face hub through timm: offline mode, a quick reachability probe, one-line errors, and the
resolved pretrained tag as the weights' identity. Shared by `timm:NAME` and the zoo's timm entries."""
from __future__ import annotations

import logging
import os

from ..errors import UserError, exception_line

log = logging.getLogger(__name__)


def offline() -> bool:
    """Whether the user asked for no network (GPUCLUST_OFFLINE or HF_HUB_OFFLINE set to anything but 0)."""
    return any(os.environ.get(v, "") not in ("", "0") for v in ("GPUCLUST_OFFLINE", "HF_HUB_OFFLINE"))


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host answers a TCP connection. huggingface_hub retries a failed lookup five times with
    back-off (about 25 s and 10 warning lines per file, 58 s for one timm model here), so an unreachable hub is
    found out once, first. Behind a proxy the host is not dialled directly, so the library is left to try."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
    except OSError:
        return False
    return True


def hub_create(timm, model_name: str, what: str, offline: bool = False, **kwargs):
    """`timm.create_model(model_name, pretrained=True)`, its weights from the hub or, when offline (asked for, or the
    hub unreachable), from the local hub cache alone; one-line errors. `what` names the encoder in them."""
    from huggingface_hub import constants

    cache_only = offline or not _hub_reachable()
    if cache_only and not offline:
        log.warning("%s: %s is unreachable; looking for the weights in the local hub cache", what,
                    constants.ENDPOINT)
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = cache_only or saved  # read at call time by huggingface_hub: no requests, cache only
    try:
        return timm.create_model(model_name, pretrained=True, **kwargs)
    except Exception as exc:  # hub, network and cache errors come in many types
        if cache_only:
            why = "offline" if offline else f"{constants.ENDPOINT} is unreachable"
            raise UserError(f"{what}: {why} and {model_name} is not in the local hub cache; pass --weights PATH "
                            f"with its weights ({exception_line(exc)})") from None
        raise UserError(f"{what}: could not create {model_name} ({exception_line(exc)}); offline, pass --weights PATH"
                        ) from None
    finally:
        constants.HF_HUB_OFFLINE = saved


def hub_identity(model, name: str) -> str:
    """The weights' identity for the store: timm's resolved pretrained tag (`timm:mobilenetv2_100` loads
    `mobilenetv2_100.ra_in1k`; a name without a tag would silently follow timm's default tag when it changes)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch, tag = cfg.get("architecture"), cfg.get("tag")
    return f"hub:{arch}.{tag}" if arch and tag else f"hub:{name}"
