"""Builds the enabled backends from the settings."""

from __future__ import annotations

from orchestrator.settings import Settings, SettingsError
from spawners.base import Backend
from spawners.local import LocalBackend
from spawners.local_sandbox import LocalOptions


def make_backends(settings: Settings) -> dict[str, Backend]:
    backends: dict[str, Backend] = {}
    for name in settings.backends:
        if name == "local":
            backends[name] = LocalBackend(settings.deployment_id, settings.sessions_dir,
                                          settings.local_python, _local_options(settings))
        elif name == "kubernetes":
            from spawners.k8s_config import load_pod_options
            from spawners.k8s_manifests import PodOptions
            from spawners.kubernetes import KubernetesBackend, KubernetesSettings

            pod = PodOptions()
            if settings.k8s_pod_config is not None:
                try:
                    pod = load_pod_options(settings.k8s_pod_config)
                except ValueError as err:
                    raise SettingsError(
                        f"ATRIUM_K8S_POD_CONFIG={str(settings.k8s_pod_config)!r}: {err}"
                    ) from err
            backends[name] = KubernetesBackend(settings.deployment_id, KubernetesSettings(
                namespace=settings.k8s_namespace,
                kubeconfig=settings.k8s_kubeconfig or None,
                context=settings.k8s_context or None,
                pod=pod,
                use_service=settings.k8s_use_service,
                max_workers=settings.sdk_threads))
        elif name == "openstack":
            from spawners.openstack import OpenStackBackend
            from spawners.openstack_boot_config import load_boot_config

            boot = None
            if settings.os_boot_config is not None:
                try:
                    boot = load_boot_config(settings.os_boot_config)
                except ValueError as err:
                    raise SettingsError(
                        f"ATRIUM_OS_BOOT_CONFIG={str(settings.os_boot_config)!r}: {err}"
                    ) from err
            backends[name] = OpenStackBackend(
                settings.deployment_id, cloud=settings.os_cloud,
                networks=settings.os_networks, security_groups=settings.os_security_groups,
                portal_cidrs=settings.os_portal_cidrs or ("0.0.0.0/0",),
                flavour_security_groups=settings.os_flavour_security_groups,
                instrument_security_groups=settings.os_instrument_security_groups,
                floating_ip_network=settings.os_floating_network or None,
                boot=boot, max_workers=settings.sdk_threads)
        elif name == "fake":
            from spawners.fake import NOWHERE, FakeBackend

            backends[name] = FakeBackend(settings.deployment_id,
                                          settings.fake_endpoint or NOWHERE)
        else:
            raise SettingsError(f"unknown backend {name!r}")
    return backends


def _local_options(settings: Settings) -> LocalOptions:
    """The local backend's options; refuses to start when the sandbox is required and this
    machine cannot make it (rather than silently running sessions unsandboxed)."""
    from spawners.cgroups import detect
    from spawners.sandbox import unavailable_reason

    options = LocalOptions(sandbox=settings.local_sandbox, run_dir=settings.local_run_dir,
                           cgroup_parent=settings.local_cgroup_parent,
                           pids_max=settings.local_pids_max)
    if options.sandbox == "required":
        reason = unavailable_reason()
        missing = detect().missing()
        if missing and not reason:
            reason = "the cgroup controllers " + ", ".join(missing) + " are not mounted"
        if reason:
            raise SettingsError(
                f"ATRIUM_LOCAL_SANDBOX=required: local sessions cannot be sandboxed: {reason}. "
                "Run the portal as root with bubblewrap installed, or set "
                "ATRIUM_LOCAL_SANDBOX=off-single-user (one user, unsandboxed; development only)")
    return options
