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


INGRESS_ROLES = ("services", "cpu", "control")  # where the public ingress may run, in order of preference


def ingress_pool(cfg: SiteConfig) -> NodePool:
    """The pool rke2-ingress-nginx runs on (its HelmChartConfig selects it, components/ingress.py).

    A ``services`` pool if the site has one, else the first cpu pool; a control pool only outside
    production (validation refuses a production site without a services or cpu pool), so the
    internet-facing node is an etcd/API node only on small clones.
    """
    for role in INGRESS_ROLES:
        for p in cfg.pools:
            if p.role == role and p.count > 0:
                return p
    raise ValueError("no VM can carry the ingress")  # validation guarantees a control VM


def ingress_vm(cfg: SiteConfig) -> tuple[NodePool, int]:
    """The VM that receives the public floating IP and the 80/443 group: node 0 of the ingress pool."""
    return ingress_pool(cfg), 0


class Tenancy(pulumi.ComponentResource):
    """Every OpenStack resource and data-source call goes through ``self.provider``, configured from
    ``aiinfn:openstack.cloud`` (the clouds.yaml entry): nothing depends on ``OS_CLOUD`` or the
    default provider. Resources whose name, fixed address or port their replacement reuses are
    deleted before they are replaced (tools/replacements.py lists what replaces what)."""

    def __init__(self, name: str, args: TenancyArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("aiinfn:tenancy:Tenancy", name, None, opts)
        cfg = args.cfg
        os_cfg = cfg.openstack
        assert os_cfg is not None
        site = cfg.site.name
        self.provider = openstack.Provider("openstack", cloud=os_cfg.cloud, opts=pulumi.ResourceOptions(parent=self))
        invoke = pulumi.InvokeOptions(parent=self, provider=self.provider)
        keep = cfg.is_protected

        def opts(**kwargs) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(parent=self, provider=self.provider, **kwargs)

        child = opts()
        # Replaced with the same name, fixed address, port or volume: the old one must go first.
        reused = opts(delete_before_replace=True)

        ext = openstack.networking.get_network_output(name=os_cfg.external_network, opts=invoke)
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
        # Neutron refuses a floating IP association while the port's subnet has no router to the
        # external network, and nodes need the route to download RKE2: both wait for the interface.
        self.router_interface = openstack.networking.RouterInterface(
            "router-if", router_id=self.router.id, subnet_id=self.subnet.id, opts=child)
        routed: list[pulumi.Resource] = [self.router_interface]

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
                    opts=reused,  # Neutron refuses a second identical rule (409 SecurityGroupRuleExists)
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
                opts=reused,
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
                    opts=reused,
                )

        # Nova key pair names are unique per user (409 on a second one with the same name).
        self.keypair = openstack.compute.Keypair("keypair", name=f"aiinfn-{site}", public_key=os_cfg.public_key,
                                                 opts=reused)
        self.control_group = openstack.compute.ServerGroup(
            "control-anti-affinity", name=f"aiinfn-{site}-control", policies="anti-affinity", opts=child
        )

        ingress_pool, ingress_index = ingress_vm(cfg)
        control0 = cfg.pools_by_role("control")[0].vm_names()[0]
        self.api_fip = openstack.networking.FloatingIp("fip-api", pool=os_cfg.external_network,
                                                       description="Kubernetes API (admin networks only)", opts=child)
        ingress_name = ingress_pool.vm_names()[ingress_index]
        self.ingress_vm_name = ingress_name
        if ingress_name == control0:
            self.ingress_fip = self.api_fip
        else:
            self.ingress_fip = openstack.networking.FloatingIp("fip-ingress", pool=os_cfg.external_network,
                                                               description="hub ingress (public HTTPS)", opts=child)
        # The NFS data volume on the storage node: the researchers' homes and projects. The storage VM
        # is scheduled into the volume's availability zone (below), so the attachment never crosses zones.
        storage_pool = cfg.pools_by_role("storage")[0]
        storage_vm = storage_pool.vm_names()[0]
        self.data_volume = openstack.blockstorage.Volume(
            "nfs-data",
            name=f"aiinfn-{site}-nfs-data",
            size=storage_pool.data_volume_gb,
            volume_type=os_cfg.volume_type,
            availability_zone=os_cfg.availability_zone,
            description="NFS homes, projects, envs and public data",
            metadata={"aiinfn-site": site, "aiinfn-site-kind": cfg.site.kind, "aiinfn-stateful": "true"},
            opts=opts(protect=keep, retain_on_delete=keep),
        )
        images = {name: openstack.images.get_image_output(name=name, most_recent=True, opts=invoke)
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
                    opts=reused,  # a control port's fixed address is held by one port at a time
                    **port_args,
                )
                self.ports[vm] = port
                hints = (
                    [openstack.compute.InstanceSchedulerHintArgs(group=self.control_group.id)]
                    if pool.role == "control" else None
                )
                zone = self.data_volume.availability_zone if vm == storage_vm else os_cfg.availability_zone
                self.instances[vm] = openstack.compute.Instance(
                    f"vm-{vm}",
                    name=f"aiinfn-{site}-{vm}",
                    flavor_name=pool.flavor,
                    key_pair=self.keypair.name,
                    availability_zone=zone,
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
                    # The pre-created port is bound to one server at a time (PortInUse otherwise).
                    opts=opts(ignore_changes=["userData", "imageName", "blockDevices[0].uuid"],
                              delete_before_replace=True, depends_on=routed),
                )

        # Not protected: it holds no data (the volume does), and protecting it would block the storage
        # VM's replacement. Detached before re-attaching: the volume is not multi-attach.
        openstack.compute.VolumeAttach(
            "nfs-data-attach",
            instance_id=self.instances[storage_vm].id,
            volume_id=self.data_volume.id,
            opts=reused,
        )

        openstack.networking.FloatingIpAssociate("fip-api-assoc", floating_ip=self.api_fip.address,
                                                 port_id=self.ports[control0].id,
                                                 opts=opts(delete_before_replace=True, depends_on=routed))
        if ingress_name != control0:
            openstack.networking.FloatingIpAssociate("fip-ingress-assoc", floating_ip=self.ingress_fip.address,
                                                     port_id=self.ports[ingress_name].id,
                                                     opts=opts(delete_before_replace=True, depends_on=routed))
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

