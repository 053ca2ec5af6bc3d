"""From the database model to the backend's :class:`InstanceSpec` (pure)."""

from __future__ import annotations

from orchestrator.models import Instance, InstanceSecret
from spawners.base import DataMount, InstanceSpec, Owner, Resources

POSIX_UID_BASE = 20000  # sessions run as 20000 + user id unless the user has a POSIX uid


def spec_for(instance: Instance, secret: InstanceSecret | None) -> InstanceSpec:
    plan = instance.plan
    image, flavour = plan.image, plan.flavour
    owner = instance.owner
    posix = owner.posix_uid or POSIX_UID_BASE + owner.id
    return InstanceSpec(
        uid=instance.uid,
        name=instance.name,
        image_ref=str(image.backend_refs.get(plan.backend, "")),
        flavour_ref=str(flavour.backend_refs.get(plan.backend, "")),
        protocols=tuple(image.protocols),
        owner=Owner(username=owner.username, uid=posix, gid=posix, email=owner.email),
        resources=Resources(cpus=flavour.cpus, memory_mb=flavour.memory_mb, gpus=flavour.gpus),
        mounts=tuple(
            DataMount(name=e.proposal, source=e.data_path, target=f"data/{e.proposal}")
            for e in instance.experiments if e.data_path
        ),
        secrets=secret.as_dict() if secret else {},
        labels={"atrium/owner": owner.username},
        boot_template=image.boot_template,
        instruments=tuple(sorted({e.instrument.name for e in instance.experiments
                                  if e.instrument is not None})),
    )
