"""Rendering: a pure function of state + layout -> {path: file}.

One template per output file, its path mirroring the target, so an admin finds the template
for a file by its name; the manifest below is the complete list. An administrator overrides a
template by putting a file of the same relative name under /etc/mailwarden/templates/ (for
example postfix/main.cf.j2); an override may `{% extends "default/postfix/main.cf.j2" %}` and
replace only a block.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import jinja2

from ..errors import RenderError
from ..layout import Layout
from ..state.schema import State
from .view import build_view

BUILTIN_TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class Target:
    template: str  # relative to the templates folder
    path: str  # appliance path; a layout maps it
    service: str  # which service must reload when it changes
    mode: int = 0o644
    # Rspamd keeps its listening sockets across a reload, so a worker whose bind_socket moves
    # (Debian's `localhost:PORT` replaced by ours on a fresh appliance) fails to bind and takes
    # Rspamd down: such files need a restart.
    restart: bool = False


MANIFEST: tuple[Target, ...] = (
    Target("postfix/main.cf.j2", "/etc/postfix/main.cf", "postfix"),
    Target("postfix/master.cf.j2", "/etc/postfix/master.cf", "postfix"),
    Target("postfix/relay_domains.j2", "/etc/postfix/mailwarden/relay_domains", "postfix"),
    Target("postfix/transport.j2", "/etc/postfix/mailwarden/transport", "postfix"),
    Target("postfix/tls_policy.j2", "/etc/postfix/mailwarden/tls_policy", "postfix"),
    Target("postfix/recipient_access.j2", "/etc/postfix/mailwarden/recipient_access", "postfix"),
    Target("postfix/postscreen_access.cidr.j2", "/etc/postfix/mailwarden/postscreen_access.cidr",
           "postfix"),
    Target("rspamd/local.d/options.inc.j2", "/etc/rspamd/local.d/options.inc", "rspamd"),
    Target("rspamd/local.d/worker-normal.inc.j2", "/etc/rspamd/local.d/worker-normal.inc",
           "rspamd", restart=True),
    Target("rspamd/local.d/worker-controller.inc.j2",
           "/etc/rspamd/local.d/worker-controller.inc", "rspamd", restart=True),
    Target("rspamd/local.d/worker-proxy.inc.j2", "/etc/rspamd/local.d/worker-proxy.inc",
           "rspamd", restart=True),
    Target("rspamd/local.d/redis.conf.j2", "/etc/rspamd/local.d/redis.conf", "rspamd"),
    Target("rspamd/local.d/actions.conf.j2", "/etc/rspamd/local.d/actions.conf", "rspamd"),
    Target("rspamd/local.d/classifier-bayes.conf.j2",
           "/etc/rspamd/local.d/classifier-bayes.conf", "rspamd"),
    Target("rspamd/local.d/greylist.conf.j2", "/etc/rspamd/local.d/greylist.conf", "rspamd"),
    Target("rspamd/local.d/dkim_signing.conf.j2", "/etc/rspamd/local.d/dkim_signing.conf",
           "rspamd"),
    Target("rspamd/local.d/fuzzy_check.conf.j2", "/etc/rspamd/local.d/fuzzy_check.conf",
           "rspamd"),
    Target("rspamd/local.d/rbl.conf.j2", "/etc/rspamd/local.d/rbl.conf", "rspamd"),
    Target("rspamd/local.d/logging.inc.j2", "/etc/rspamd/local.d/logging.inc", "rspamd"),
    Target("rspamd/local.d/groups.conf.j2", "/etc/rspamd/local.d/groups.conf", "rspamd"),
    Target("rspamd/override.d/milter_headers.conf.j2",
           "/etc/rspamd/override.d/milter_headers.conf", "rspamd"),
    Target("clamav/clamd.conf.j2", "/etc/clamav/clamd.conf", "clamav"),
    Target("clamav/freshclam.conf.j2", "/etc/clamav/freshclam.conf", "freshclam"),
    Target("redis/redis.conf.j2", "/etc/redis/redis.conf", "redis"),
    Target("unbound/unbound.conf.j2", "/etc/unbound/unbound.conf", "unbound"),
    # Loaded by nftables.service at boot; until the first apply, roles/hardening's default.
    Target("nftables/nftables.conf.j2", "/etc/nftables.conf", "nftables", mode=0o640),
)

SERVICES: tuple[str, ...] = tuple(dict.fromkeys(t.service for t in MANIFEST))


@dataclass(frozen=True)
class RenderedFile:
    target: Target
    path: Path  # where it goes in this layout
    content: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content.encode()).hexdigest()


def _environment(overrides: Path | None) -> jinja2.Environment:
    builtin = jinja2.FileSystemLoader(BUILTIN_TEMPLATES)
    loaders: list[jinja2.BaseLoader] = []
    if overrides is not None and overrides.is_dir():
        loaders.append(jinja2.FileSystemLoader(overrides))
    loaders += [builtin, jinja2.PrefixLoader({"default": builtin}, delimiter="/")]
    # Config files, not HTML: autoescaping would corrupt them. Values that reach a config
    # line are validated by the schema (no control characters, no newlines).
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701
    )


def _header(target: Target, layout: Layout) -> str:
    override = layout.templates_dir / target.template
    return (
        f"# Managed by Mailwarden from {layout.state_file}; changes here are overwritten.\n"
        f"# To change it, edit the state, or override the template in {override}\n"
    )


def render(state: State, layout: Layout, overrides: Path | None = None) -> list[RenderedFile]:
    """Every managed file for this state and layout. Pure: reads only templates."""
    env = _environment(overrides)
    view = build_view(state, layout)
    files = []
    for target in MANIFEST:
        try:
            template = env.get_template(target.template)
            body = template.render(v=view, state=state, layout=layout, ports=layout.ports)
        except jinja2.TemplateError as exc:
            where = getattr(exc, "filename", None) or target.template
            line = getattr(exc, "lineno", None)
            raise RenderError(
                f"template {where}{f' line {line}' if line else ''}: {exc.message or exc}"
            ) from exc
        files.append(RenderedFile(target, layout.path(target.path), _header(target, layout) + body))
    return files
