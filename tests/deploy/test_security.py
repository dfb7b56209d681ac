"""Every pod would be admitted under OpenShift's restricted-v2 SCC (and PSA
"restricted"), and runs with a read-only root filesystem.

restricted-v2 assigns the UID, GID and fsGroup from the namespace's range, so
a manifest must not fix them; it requires non-root, no privilege escalation,
all capabilities dropped (NET_BIND_SERVICE is the only one it may add back),
the RuntimeDefault seccomp profile, and no host namespaces, ports or paths.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from .manifests import Doc, containers, pod_specs

ALLOWED_VOLUMES = {
    "configMap", "downwardAPI", "emptyDir", "persistentVolumeClaim", "projected", "secret",
    "ephemeral", "csi",
}
FIXED_IDS = ("runAsUser", "runAsGroup", "fsGroup", "supplementalGroups")


def restricted_v2_violations(pod: Doc) -> list[str]:
    """What restricted-v2 would refuse in this pod spec (empty: admitted)."""
    problems: list[str] = []
    pod_sc = pod.get("securityContext", {})
    for key in FIXED_IDS:
        if key in pod_sc:
            problems.append(f"pod fixes {key} (OpenShift assigns it from the namespace range)")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            problems.append(f"pod uses {key}")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            problems.append(f"volume {volume['name']} is {sorted(kinds - ALLOWED_VOLUMES)}")
    for c in containers(pod):
        sc = c.get("securityContext", {})
        where = f"container {c['name']}"
        for key in ("runAsUser", "runAsGroup"):
            if key in sc:
                problems.append(f"{where} fixes {key}")
        if sc.get("privileged"):
            problems.append(f"{where} is privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            problems.append(f"{where} does not drop ALL capabilities")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where} adds capabilities {caps['add']}")
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            problems.append(f"{where} may run as root (runAsNonRoot)")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccompProfile must be RuntimeDefault")
        for port in c.get("ports", []):
            if "hostPort" in port:
                problems.append(f"{where} uses hostPort {port['hostPort']}")
    return problems


def test_every_pod_is_admitted_under_restricted_v2(docs: list[Doc]) -> None:
    problems = [f"{who}: {p}" for who, pod in pod_specs(docs) for p in restricted_v2_violations(pod)]
    assert not problems, "\n".join(problems)


def test_the_check_catches_what_restricted_v2_refuses() -> None:
    bad = {
        "securityContext": {"runAsUser": 1000, "fsGroup": 1000},
        "hostNetwork": True,
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
        "containers": [{"name": "c", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}},
                        "ports": [{"containerPort": 80, "hostPort": 80}]}],
    }
    found = "\n".join(restricted_v2_violations(bad))
    for expected in ("runAsUser", "fsGroup", "hostNetwork", "hostPath", "allowPrivilegeEscalation",
                     "drop ALL", "SYS_ADMIN", "root", "seccomp", "hostPort"):
        assert expected in found, expected


def _writable_mounts(pod: Doc, container: Doc) -> list[PurePosixPath]:
    writable = {
        v["name"] for v in pod.get("volumes", [])
        if "emptyDir" in v or "persistentVolumeClaim" in v or "ephemeral" in v
    }
    return [
        PurePosixPath(m["mountPath"]) for m in container.get("volumeMounts", [])
        if m["name"] in writable and not m.get("readOnly")
    ]


def test_read_only_root_with_writable_tmp_and_caches(docs: list[Doc]) -> None:
    """Root filesystem read-only; /tmp and every cache/home the process writes are mounts."""
    problems = []
    for who, pod in pod_specs(docs):
        for c in containers(pod):
            where = f"{who} {c['name']}"
            if c.get("securityContext", {}).get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem must be true")
            mounts = _writable_mounts(pod, c)
            if PurePosixPath("/tmp") not in mounts:
                problems.append(f"{where}: no writable /tmp")
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            for var in ("HOME", "HF_HOME", "XDG_CACHE_HOME", "TORCH_HOME"):
                path = env.get(var)
                if path and not any(PurePosixPath(path).is_relative_to(m) for m in mounts):
                    problems.append(f"{where}: {var}={path} is not on a writable mount")
            if "HOME" not in env:
                problems.append(f"{where}: HOME unset (the image's home is read-only)")
    assert not problems, "\n".join(problems)


def test_no_service_account_token_in_app_pods(docs: list[Doc]) -> None:
    """No automount; the only token is the oauth-proxy's own (its OAuth client
    secret), mounted into that container alone."""
    for who, pod in pod_specs(docs):
        assert pod.get("automountServiceAccountToken") is False, who
        token_volumes = {
            v["name"] for v in pod.get("volumes", [])
            if any("serviceAccountToken" in s for s in v.get("projected", {}).get("sources", []))
        }
        for c in containers(pod):
            mounted = {m["name"] for m in c.get("volumeMounts", [])} & token_volumes
            assert not mounted or c["name"] == "oauth-proxy", f"{who}/{c['name']} mounts a token"


def test_volumes_are_not_relabelled_on_every_start(docs: list[Doc]) -> None:
    """A pod with a persistent volume sets fsGroupChangePolicy: OnRootMismatch, so a
    large uploads volume is not walked (chown of every file) at each pod start."""
    for who, pod in pod_specs(docs):
        if any("persistentVolumeClaim" in v for v in pod.get("volumes", [])):
            assert pod["securityContext"].get("fsGroupChangePolicy") == "OnRootMismatch", who
