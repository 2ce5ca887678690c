"""Ansible module: lay out folders and small text files with owner and mode, in one pass.

Why not ``file``/``copy``/``template`` per path: each of those runs two modules
on the target (a stat, then copy or file), and a device gets about fifteen
paths. Measured on 2 busy cores with three hosts, that made a re-run that
changes nothing take about 30 s; one pass over all paths takes a fraction of
a second (docs/provisioning.md).
Idempotent, ``--check`` and ``--diff`` aware; the contents of ``secret_files``
are never returned, logged or shown in a diff.
"""

from __future__ import annotations

import os

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: igris_files
short_description: Folders and small text files with owner and mode, in one pass
description:
  - Makes each directory (and its missing parents) and sets its owner, group and mode.
  - Writes each file whose content differs (atomically, never wider than 0600 while
    written), then sets its owner, group and mode.
options:
  directories:
    description: Folders to make, in order.
    type: list
    elements: dict
    default: []
    suboptions:
      path: {description: The folder., type: path, required: true}
      mode: {description: Its mode, e.g. "0700"., type: str, required: true}
      owner: {description: Its owner (unchanged if omitted)., type: str}
      group: {description: Its group (unchanged if omitted)., type: str}
  files:
    description: Files to write; their folders must exist or be listed in I(directories).
    type: list
    elements: dict
    default: []
    suboptions:
      dest: {description: The file., type: path, required: true}
      content: {description: Its text., type: str, required: true}
      mode: {description: Its mode., type: str, required: true}
      owner: {description: Its owner (unchanged if omitted)., type: str}
      group: {description: Its group (unchanged if omitted)., type: str}
  secret_files:
    description: Like I(files), but the content is never shown (keys).
    type: list
    elements: dict
    default: []
"""

EXAMPLES = r"""
- name: Install a device's keys
  igris_files:
    directories:
      - {path: /var/lib/igris/keys, mode: "0700", owner: igris, group: igris}
    secret_files:
      - dest: /var/lib/igris/keys/sign.key
        content: "{{ lookup('ansible.builtin.file', 'members/pi-01/keys/sign.key') }}\n"
        mode: "0600"
        owner: igris
        group: igris
"""

RETURN = r"""
changed_paths:
  description: The folders and files made, written or given new attributes.
  type: list
  elements: str
  returned: always
"""


def _attributes(path: str, spec: dict) -> dict:
    return {"path": path, "mode": spec["mode"], "owner": spec.get("owner"),
            "group": spec.get("group"), "secontext": [None, None, None], "attributes": None}


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _write(path: str, data: bytes) -> None:
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".igris-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _lay_out(module: AnsibleModule) -> tuple[list[str], list[dict]]:
    changed_paths: list[str] = []
    diffs: list[dict] = []
    for spec in module.params["directories"]:
        path = spec["path"]
        made = not os.path.isdir(path)
        if made and not module.check_mode:
            os.makedirs(path)
        if made and module.check_mode:
            changed_paths.append(path)
            continue
        if module.set_directory_attributes_if_different(_attributes(path, spec), made):
            changed_paths.append(path)
    files = [(spec, False) for spec in module.params["files"]]
    files += [(spec, True) for spec in module.params["secret_files"]]
    for spec, secret in files:
        dest = spec["dest"]
        data = spec["content"].encode()
        before = _read(dest)
        rewrite = before != data
        if rewrite:
            diffs.append({
                "before_header": dest, "after_header": dest,
                "before": "" if before is None else ("(secret)\n" if secret else before.decode(
                    errors="replace")),
                "after": "(secret)\n" if secret else spec["content"],
            })
            if not module.check_mode:
                _write(dest, data)
        if module.check_mode and before is None:
            changed_paths.append(dest)
            continue
        if module.set_file_attributes_if_different(_attributes(dest, spec), rewrite):
            changed_paths.append(dest)
    return changed_paths, diffs


def main() -> None:
    common = {"mode": {"type": "str", "required": True}, "owner": {"type": "str"},
              "group": {"type": "str"}}
    module = AnsibleModule(
        argument_spec={
            "directories": {"type": "list", "elements": "dict", "default": [], "options": {
                "path": {"type": "path", "required": True}, **common}},
            "files": {"type": "list", "elements": "dict", "default": [], "options": {
                "dest": {"type": "path", "required": True},
                "content": {"type": "str", "required": True}, **common}},
            "secret_files": {"type": "list", "elements": "dict", "default": [], "options": {
                "dest": {"type": "path", "required": True},
                "content": {"type": "str", "required": True, "no_log": True}, **common}},
        },
        supports_check_mode=True,
    )
    try:
        changed_paths, diffs = _lay_out(module)
    except OSError as exc:
        module.fail_json(msg=f"{exc.filename}: {exc.strerror}")
    module.exit_json(changed=bool(changed_paths), changed_paths=changed_paths, diff=diffs)


if __name__ == "__main__":
    main()
