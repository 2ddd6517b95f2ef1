"""The OpenStack tenancy: network, router, security groups, keypair, VMs, data volume, floating IPs.

Only the ingress is public. SSH and the Kubernetes API are reachable from the admin networks
alone; everything else is open only between the tenancy's own machines.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

import pulumi
import pulumi_openstack as openstack

from aiinfn.config.model import NodePool, SiteConfig

SSH_PORT = 22
API_PORT = 6443
INGRESS_PORTS = (80, 443)  # 80 only redirects and answers ACME http-01 challenges


@dataclass
class TenancyArgs:
    cfg: SiteConfig
    # user_data(pool, index, api_address, data_volume_id) -> cloud-init; supplied by the cluster component
    user_data: Callable[[NodePool, int, pulumi.Output[str], pulumi.Output[str]], pulumi.Input[str]]


def fixed_ip(cfg: SiteConfig, pool: NodePool, index: int) -> str:
    """Control VMs get addresses known before they exist, so joiners can be told where to go."""
    assert cfg.openstack is not None
    net = ipaddress.ip_network(cfg.openstack.internal_cidr)
    controls = [p for p in cfg.pools if p.role == "control"]
    offset = 10 + sum(p.count for p in controls[: controls.index(pool)]) + index
    return str(net.network_address + offset)


def ingress_vm(cfg: SiteConfig) -> tuple[NodePool, int]:
    """The VM that receives the public floating IP: the first cpu node, else the first control node."""
    for role in ("cpu", "control"):
        for p in cfg.pools:
            if p.role == role and p.count > 0:
                return p, 0
    raise ValueError("no VM can carry the ingress")  # validation guarantees a control VM


class Tenancy(pulumi.ComponentResource):
    def __init__(self, name: str, args: TenancyArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("aiinfn:tenancy:Tenancy", name, None, opts)
        cfg = args.cfg
        os_cfg = cfg.openstack
        assert os_cfg is not None
        site = cfg.site.name
        child = pulumi.ResourceOptions(parent=self)
        keep = cfg.is_protected

        ext = openstack.networking.get_network_output(name=os_cfg.external_network, opts=pulumi.InvokeOptions(parent=self))
        self.network = openstack.networking.Network("net", name=f"aiinfn-{site}", admin_state_up=True, opts=child)
        self.subnet = openstack.networking.Subnet(
            "subnet",
            name=f"aiinfn-{site}",
            network_id=self.network.id,
            cidr=os_cfg.internal_cidr,
            ip_version=4,
            dns_nameservers=os_cfg.dns_nameservers,
            allocation_pools=[self._dhcp_pool(os_cfg.internal_cidr)],
            opts=child,
        )
        self.router = openstack.networking.Router(
            "router", name=f"aiinfn-{site}", external_network_id=ext.id, admin_state_up=True, opts=child
        )
        openstack.networking.RouterInterface("router-if", router_id=self.router.id, subnet_id=self.subnet.id, opts=child)

        # Security groups: admin (SSH + API from admin CIDRs), internal (tenancy only), ingress (public HTTPS).
        self.sg_admin = openstack.networking.SecGroup("sg-admin", name=f"aiinfn-{site}-admin",
                                                      description="SSH and Kubernetes API from admin networks only", opts=child)
        for i, cidr in enumerate(os_cfg.admin_cidrs):
            for port, what in ((SSH_PORT, "ssh"), (API_PORT, "api")):
                openstack.networking.SecGroupRule(
                    f"sg-admin-{what}-{i}",
                    security_group_id=self.sg_admin.id,
                    direction="ingress",
                    ethertype="IPv6" if ":" in cidr else "IPv4",
                    protocol="tcp",
                    port_range_min=port,
                    port_range_max=port,
                    remote_ip_prefix=cidr,
                    description=f"{what} from admin network {cidr}",
                    opts=child,
                )
        self.sg_internal = openstack.networking.SecGroup("sg-internal", name=f"aiinfn-{site}-internal",
                                                         description="all traffic between the site's machines", opts=child)
        for proto in ("tcp", "udp", "icmp"):
            openstack.networking.SecGroupRule(
                f"sg-internal-{proto}",
                security_group_id=self.sg_internal.id,
                direction="ingress",
                ethertype="IPv4",
                protocol=proto,
                remote_group_id=self.sg_internal.id,
                description=f"{proto} between site machines",
                opts=child,
            )
        self.sg_ingress = openstack.networking.SecGroup("sg-ingress", name=f"aiinfn-{site}-ingress",
                                                        description="public HTTP(S) to the hub ingress", opts=child)
        for port in INGRESS_PORTS:
            for eth, anywhere in (("IPv4", "0.0.0.0/0"), ("IPv6", "::/0")):
                openstack.networking.SecGroupRule(
                    f"sg-ingress-{port}-{eth.lower()}",
                    security_group_id=self.sg_ingress.id,
                    direction="ingress",
                    ethertype=eth,
                    protocol="tcp",
                    port_range_min=port,
                    port_range_max=port,
                    remote_ip_prefix=anywhere,
                    description=f"public port {port} to the ingress",
                    opts=child,
                )

        self.keypair = openstack.compute.Keypair("keypair", name=f"aiinfn-{site}", public_key=os_cfg.public_key, opts=child)
        self.control_group = openstack.compute.ServerGroup(
            "control-anti-affinity", name=f"aiinfn-{site}-control", policies="anti-affinity", opts=child
        )

        ingress_pool, ingress_index = ingress_vm(cfg)
        control0 = cfg.pools_by_role("control")[0].vm_names()[0]
        self.api_fip = openstack.networking.FloatingIp("fip-api", pool=os_cfg.external_network,
                                                       description="Kubernetes API (admin networks only)", opts=child)
        ingress_name = ingress_pool.vm_names()[ingress_index]
        if ingress_name == control0:
            self.ingress_fip = self.api_fip
        else:
            self.ingress_fip = openstack.networking.FloatingIp("fip-ingress", pool=os_cfg.external_network,
                                                               description="hub ingress (public HTTPS)", opts=child)
        # The NFS data volume on the storage node: the researchers' homes and projects.
        storage_pool = cfg.pools_by_role("storage")[0]
        storage_vm = storage_pool.vm_names()[0]
        self.data_volume = openstack.blockstorage.Volume(
            "nfs-data",
            name=f"aiinfn-{site}-nfs-data",
            size=storage_pool.data_volume_gb,
            volume_type=os_cfg.volume_type,
            description="NFS homes, projects, envs and public data",
            metadata={"aiinfn-site": site, "aiinfn-site-kind": cfg.site.kind, "aiinfn-stateful": "true"},
            opts=pulumi.ResourceOptions(parent=self, protect=keep, retain_on_delete=keep),
        )
        images = {name: openstack.images.get_image_output(name=name, most_recent=True,
                                                          opts=pulumi.InvokeOptions(parent=self))
                  for name in dict.fromkeys([os_cfg.image] + [p.image for p in cfg.pools if p.image])}
        self.instances: dict[str, openstack.compute.Instance] = {}
        self.ports: dict[str, openstack.networking.Port] = {}
        for pool in cfg.pools:
            for index, vm in enumerate(pool.vm_names()):
                is_ingress = (pool.name, index) == (ingress_pool.name, ingress_index)
                port_args: dict = {}
                if pool.role == "control":
                    port_args["fixed_ips"] = [openstack.networking.PortFixedIpArgs(
                        subnet_id=self.subnet.id, ip_address=fixed_ip(cfg, pool, index))]
                else:
                    port_args["fixed_ips"] = [openstack.networking.PortFixedIpArgs(subnet_id=self.subnet.id)]
                port = openstack.networking.Port(
                    f"port-{vm}",
                    name=f"aiinfn-{site}-{vm}",
                    network_id=self.network.id,
                    security_group_ids=[self.sg_internal.id, self.sg_admin.id]
                    + ([self.sg_ingress.id] if is_ingress else []),
                    admin_state_up=True,
                    opts=child,
                    **port_args,
                )
                self.ports[vm] = port
                hints = (
                    [openstack.compute.InstanceSchedulerHintArgs(group=self.control_group.id)]
                    if pool.role == "control" else None
                )
                self.instances[vm] = openstack.compute.Instance(
                    f"vm-{vm}",
                    name=f"aiinfn-{site}-{vm}",
                    flavor_name=pool.flavor,
                    key_pair=self.keypair.name,
                    availability_zone=os_cfg.availability_zone,
                    block_devices=[openstack.compute.InstanceBlockDeviceArgs(
                        source_type="image",
                        uuid=images[pool.image or os_cfg.image].id,
                        destination_type="volume",
                        volume_size=pool.boot_volume_gb,
                        volume_type=os_cfg.volume_type,
                        boot_index=0,
                        delete_on_termination=True,
                    )],
                    networks=[openstack.compute.InstanceNetworkArgs(port=port.id)],
                    scheduler_hints=hints,
                    user_data=args.user_data(pool, index, self.api_fip.address, self.data_volume.id),
                    metadata={"aiinfn-site": site, "aiinfn-site-kind": cfg.site.kind, "aiinfn-pool": pool.name,
                              "aiinfn-role": pool.role},
                    # cloud-init only runs at first boot: a changed template must not rebuild a node.
                    opts=pulumi.ResourceOptions(parent=self, ignore_changes=["userData", "imageName", "blockDevices[0].uuid"]),
                )

        openstack.compute.VolumeAttach(
            "nfs-data-attach",
            instance_id=self.instances[storage_vm].id,
            volume_id=self.data_volume.id,
            opts=pulumi.ResourceOptions(parent=self, protect=keep, retain_on_delete=keep),
        )

        openstack.networking.FloatingIpAssociate("fip-api-assoc", floating_ip=self.api_fip.address,
                                                 port_id=self.ports[control0].id, opts=child)
        if ingress_name != control0:
            openstack.networking.FloatingIpAssociate("fip-ingress-assoc", floating_ip=self.ingress_fip.address,
                                                     port_id=self.ports[ingress_name].id, opts=child)
        self.api_address = self.api_fip.address
        self.ingress_address = self.ingress_fip.address
        self.register_outputs({"api_address": self.api_address, "ingress_address": self.ingress_address})

    @staticmethod
    def _dhcp_pool(cidr: str) -> openstack.networking.SubnetAllocationPoolArgs:
        """Leave the first 63 addresses out of DHCP: control VMs take fixed ones from there."""
        net = ipaddress.ip_network(cidr)
        return openstack.networking.SubnetAllocationPoolArgs(
            start=str(net.network_address + 64), end=str(net.broadcast_address - 1)
        )

