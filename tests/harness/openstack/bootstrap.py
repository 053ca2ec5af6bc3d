"""Bootstrap of the harness cloud through its public APIs (openstacksdk).

Two steps, both against a freshly started cloud:

* :func:`keystone_catalogue`: service project, service users and the catalogue entries
  (run as soon as Keystone answers, before the other services get their first request);
* :func:`project_resources`: the ``atrium`` test project and user, unlimited quotas,
  flavours, image, network/subnet and security group; returns :class:`CloudSettings`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

import openstack

REGION = "RegionOne"
PROJECT = "atrium"
USER = "atrium"
USER_PASSWORD = "atrium-secret"
CLOUD_NAME = "atrium-harness"
NETWORK_CIDR = "127.42.0.0/24"  # loopback: the lab driver binds sessions on fixed IPs
JUPYTER_PORT = 8888
# Host capacity (harness driver): 8 vCPU x 4.0 allocation ratio, 16 GiB RAM x 1.0.
FLAVOUR = {"name": "atrium.small", "vcpus": 1, "ram": 512, "disk": 1}
BIG_FLAVOUR = {"name": "atrium.too-big", "vcpus": 64, "ram": 262144, "disk": 1}


@dataclass(frozen=True)
class CloudSettings:
    """How to reach the harness cloud, plus the ids of what the bootstrap created.

    ``username``/``password``/``project_name`` is the unprivileged test user (member of
    the ``atrium`` project); the ``admin_*`` fields are for assertions the test user may
    not be allowed to make (e.g. reading user-data back).
    """

    auth_url: str
    region_name: str
    project_name: str
    username: str
    password: str
    user_domain_name: str
    project_domain_name: str
    admin_project_name: str
    admin_username: str
    admin_password: str
    image_id: str
    flavour_id: str
    big_flavour_id: str
    network_id: str
    network_name: str
    security_group: str
    clouds_yaml: str
    cloud_name: str

    def auth(self) -> dict[str, str]:
        """The keystoneauth ``password`` plugin settings for the test user."""
        return {"auth_url": self.auth_url, "username": self.username,
                "password": self.password, "project_name": self.project_name,
                "user_domain_name": self.user_domain_name,
                "project_domain_name": self.project_domain_name}

    def connect(self, *, admin: bool = False) -> openstack.connection.Connection:
        auth = self.auth()
        if admin:
            auth.update(username=self.admin_username, password=self.admin_password,
                        project_name=self.admin_project_name)
        # gunicorn may close an idle keep-alive connection just as the client reuses it:
        # retry such connection failures instead of failing the test on them.
        return openstack.connection.Connection(region_name=self.region_name, auth=auth,
                                               connect_retries=3)

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _admin(auth_url: str, password: str, **options: Any) -> openstack.connection.Connection:
    return openstack.connection.Connection(
        region_name=REGION, **options,
        auth={"auth_url": auth_url, "username": "admin", "password": password,
              "project_name": "admin", "user_domain_name": "Default",
              "project_domain_name": "Default"})


def keystone_catalogue(auth_url: str, password: str, service_users: Iterable[str],
                       endpoints: Mapping[str, tuple[str, str]]) -> None:
    """Create the service users (admin + service roles) and the catalogue.

    ``endpoints`` maps service type to (service name, URL); each gets a public and an
    internal endpoint (services look up "internal" first, clients "public").
    """
    # the catalogue's identity URL may be a placeholder (template seeding): talk to auth_url
    conn = _admin(auth_url, password, identity_endpoint_override=auth_url)
    idn: Any = conn.identity  # v3 (the SDK types it as a v2/v3 union)
    service_project = idn.create_project(name="service", domain_id="default")
    admin_role = idn.find_role("admin", ignore_missing=False)
    service_role = idn.find_role("service") or idn.create_role(name="service")
    for name in service_users:
        user = idn.create_user(name=name, password=password, domain_id="default",
                               default_project_id=service_project.id)
        idn.assign_project_role_to_user(service_project, user, admin_role)
        idn.assign_project_role_to_user(service_project, user, service_role)
    for service_type, (name, url) in endpoints.items():
        service = idn.create_service(name=name, type=service_type)
        for interface in ("public", "internal"):
            idn.create_endpoint(service_id=service.id, interface=interface, url=url,
                                region_id=REGION)
    conn.close()


def project_resources(*, auth_url: str, admin_password: str, run_dir: Path) -> CloudSettings:
    """Create the test project/user and what servers need; write a clouds.yaml."""
    conn = _admin(auth_url, admin_password)
    idn: Any = conn.identity  # v3 (the SDK types it as a v2/v3 union)
    project = idn.create_project(name=PROJECT, domain_id="default")
    user = idn.create_user(name=USER, password=USER_PASSWORD, domain_id="default",
                           default_project_id=project.id)
    idn.assign_project_role_to_user(project, user, idn.find_role("member",
                                                                 ignore_missing=False))
    # unlimited quotas: the too-big flavour must fail on capacity, not with a quota 403
    conn.set_compute_quotas(project.id, instances=-1, cores=-1, ram=-1)

    flavour = conn.compute.create_flavor(**FLAVOUR, is_public=True)
    big = conn.compute.create_flavor(**BIG_FLAVOUR, is_public=True)
    image = conn.image.create_image(name="atrium-tiny", data=b"\0" * 512,
                                    disk_format="raw", container_format="bare",
                                    visibility="public", allow_duplicates=True)

    network = conn.network.create_network(name="atrium-net", project_id=project.id)
    conn.network.create_subnet(
        name="atrium-subnet", network_id=network.id, project_id=project.id, ip_version=4,
        cidr=NETWORK_CIDR, enable_dhcp=False, gateway_ip=None,
        allocation_pools=[{"start": "127.42.0.10", "end": "127.42.0.250"}])
    group = conn.network.create_security_group(
        name="atrium-sessions", project_id=project.id,
        description="Atrium sessions: JupyterLab from the portal")
    conn.network.create_security_group_rule(
        security_group_id=group.id, project_id=project.id, direction="ingress",
        ethertype="IPv4", protocol="tcp", port_range_min=JUPYTER_PORT,
        port_range_max=JUPYTER_PORT)
    conn.close()

    clouds_yaml = run_dir / "clouds.yaml"
    settings = CloudSettings(
        auth_url=auth_url, region_name=REGION, project_name=PROJECT, username=USER,
        password=USER_PASSWORD, user_domain_name="Default", project_domain_name="Default",
        admin_project_name="admin", admin_username="admin", admin_password=admin_password,
        image_id=image.id, flavour_id=flavour.id, big_flavour_id=big.id,
        network_id=network.id, network_name=network.name, security_group=group.name,
        clouds_yaml=str(clouds_yaml), cloud_name=CLOUD_NAME)
    cloud: dict[str, Any] = {"auth": settings.auth(), "region_name": REGION,
                             "identity_api_version": 3}
    clouds_yaml.write_text(yaml.safe_dump({"clouds": {CLOUD_NAME: cloud}}))
    return settings
