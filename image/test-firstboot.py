#!/usr/bin/python3
"""Unit tests of the appliance's first-boot step (image/rootfs/usr/lib/tiergate/firstboot) that
need no VM: the seed's rules, the firewall, smb.conf and tiergate.toml it writes, and when a seed
is applied at all. The whole step runs in image/boot-test.sh.

Run: python3 image/test-firstboot.py (tests/integration/image.rs runs it in the test command).
"""

import importlib.machinery
import importlib.util
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
FIRSTBOOT = os.path.join(HERE, "rootfs/usr/lib/tiergate/firstboot")


def load_firstboot():
    loader = importlib.machinery.SourceFileLoader("firstboot", FIRSTBOOT)
    spec = importlib.util.spec_from_loader("firstboot", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


fb = load_firstboot()


def seed_from(text):
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(text)
    try:
        seed = fb.load_seed(f.name)
        fb.validate(seed)
        return seed
    finally:
        os.unlink(f.name)


class SeedRules(unittest.TestCase):
    def refused(self, text, needle):
        with self.assertRaises(fb.SeedError) as cm:
            seed_from(text)
        self.assertIn(needle, str(cm.exception))
        return str(cm.exception)

    def test_nfs_clients_must_be_explicit(self):
        for c in ["*", "0.0.0.0/0", "::/0", "0.0.0.0", "*.lan", "host?", "@netgroup", "-rw"]:
            with self.subTest(client=c):
                self.refused(f'[shares]\nnfs_clients = ["192.168.1.0/24", "{c}"]\n',
                             "shares.nfs_clients")
        seed = seed_from('[shares]\nnfs_clients = ["192.168.10.0/24", "10.1.2.3", '
                         '"fd00::/64", "backup-srv.lan"]\n')
        self.assertEqual(len(seed["shares"]["nfs_clients"]), 4)

    def test_listeners_use_unprivileged_ports(self):
        for listen in ["0.0.0.0:443", "0.0.0.0:80", "0.0.0.0:0", "0.0.0.0:70000"]:
            with self.subTest(listen=listen):
                self.refused(f'[web]\nlisten = "{listen}"\n', "web.listen")
        self.assertEqual(seed_from('[webdav]\nlisten = "[::]:8443"\n')["_webdav_port"], 8443)

    def test_management_cidrs_are_networks_not_everything(self):
        for c in ["0.0.0.0/0", "::/0", "::", "example.lan", "10.0.0.0/33"]:
            with self.subTest(cidr=c):
                self.refused(f'[web]\nmanagement_cidrs = ["{c}"]\n', "web.management_cidrs")
        seed = seed_from('[web]\nmanagement_cidrs = ["192.168.10.7/24", "fd00:1::/64"]\n')
        self.assertEqual([str(n) for n in seed["_mgmt_nets"]], ["192.168.10.0/24", "fd00:1::/64"])
        self.assertEqual(seed_from("")["_mgmt_nets"], [])


    def test_the_example_seed_is_valid(self):
        seed = fb.load_seed(os.path.join(HERE, "seed.example.toml"))
        fb.validate(seed)
        self.assertEqual([str(n) for n in seed["_mgmt_nets"]], ["192.168.10.0/24"])


class WrittenFiles(unittest.TestCase):
    def test_status_port_is_open_only_to_management_networks(self):
        nets = [ipaddress.ip_network("192.168.10.0/24"), ipaddress.ip_network("fd00::/64")]
        conf = fb.nft_conf([445, 8080], 8081, nets)
        self.assertIn("tcp dport { 445, 8080 } accept", conf)
        self.assertIn("ip saddr { 192.168.10.0/24 } tcp dport 8081 accept", conf)
        self.assertIn("ip6 saddr { fd00::/64 } tcp dport 8081 accept", conf)
        rules = [l.strip() for l in conf.splitlines() if "8081" in l]
        self.assertEqual(len(rules), 2, rules)
        self.assertTrue(all(r.startswith(("ip saddr", "ip6 saddr")) for r in rules), rules)
        # No management network: the port is not opened to anyone (loopback always passes).
        conf = fb.nft_conf([445], 8081, [])
        self.assertNotIn("8081", conf)
        self.assertIn("iif lo accept", conf)
        conf = fb.nft_conf([], 8081, [])
        self.assertNotIn("tcp dport", conf)

    @unittest.skipUnless(shutil.which("nft") and os.geteuid() == 0, "needs nft and root")
    def test_firewall_parses_in_nft(self):
        nets = [ipaddress.ip_network("10.0.2.2/32"), ipaddress.ip_network("fd00::/64")]
        with tempfile.NamedTemporaryFile("w", suffix=".nft") as f:
            f.write(fb.nft_conf([22, 445, 2049, 8080], 8081, nets))
            f.flush()
            r = subprocess.run(["nft", "-c", "-f", f.name], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_samba_requires_encryption(self):
        conf = fb.samba_conf("backup-gw-01", "tiergate")
        self.assertIn("server smb encrypt = required", conf)
        self.assertNotIn("desired", conf)

    def test_status_server_and_share_use_tls(self):
        seed = seed_from('[webdav]\ntls = true\n[web]\nmanagement_cidrs = ["10.0.0.0/8"]\n')
        conf = tomllib.loads(fb.render_config(seed, "1GiB"))
        self.assertEqual(conf["web"]["tls_cert"], fb.TLS_CERT)
        self.assertEqual(conf["web"]["tls_key"], fb.TLS_KEY)
        self.assertEqual(conf["webdav"]["tls_cert"], fb.TLS_CERT)
        # Plain-HTTP WebDAV is still the seed's choice; the status server never is.
        seed = seed_from("[webdav]\ntls = false\n")
        conf = tomllib.loads(fb.render_config(seed, "1GiB"))
        self.assertNotIn("tls_cert", conf["webdav"])
        self.assertEqual(conf["web"]["tls_cert"], fb.TLS_CERT)


class WhenASeedIsApplied(unittest.TestCase):
    """main()'s decision: a seed at the first boot; later only with tiergate.seed=apply."""

    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.saved = {k: getattr(fb, k) for k in
                      ("DONE", "reseed_requested", "seed_disks", "find_seed", "apply")}
        fb.DONE = os.path.join(self.dir, "configured")
        self.applied = []
        self.seed = os.path.join(self.dir, "seed.toml")
        with open(self.seed, "w") as f:
            f.write('hostname = "gw"\n')
        fb.seed_disks = lambda: ["/dev/vdb (label TGSEED)"]
        fb.find_seed = lambda explicit: (self.seed, "/dev/vdb (label TGSEED)", None)
        fb.apply = lambda seed, source, reconfigure, replace_defaults=False: \
            self.applied.append((source, reconfigure, replace_defaults))
        self.argv = sys.argv
        sys.argv = ["firstboot"]

    def tearDown(self):
        for k, v in self.saved.items():
            setattr(fb, k, v)
        sys.argv = self.argv
        shutil.rmtree(self.dir)

    def configured(self, source):
        with open(fb.DONE, "w") as f:
            json.dump({"source": source, "time": 0}, f)

    def test_first_boot_applies_the_seed(self):
        fb.reseed_requested = lambda: False
        self.assertEqual(fb.main(), 0)
        self.assertEqual(self.applied, [("/dev/vdb (label TGSEED)", False, False)])

    def test_a_later_seed_disk_is_ignored(self):
        fb.reseed_requested = lambda: False
        for prev in ("/dev/vdb (label TGSEED)", None):  # seeded, or running on the defaults
            with self.subTest(prev=prev):
                self.configured(prev)
                self.assertEqual(fb.main(), 0)
                self.assertEqual(self.applied, [])

    def test_a_later_seed_is_applied_when_the_console_asks(self):
        fb.reseed_requested = lambda: True
        self.configured(None)
        self.assertEqual(fb.main(), 0)
        self.assertEqual(self.applied, [("/dev/vdb (label TGSEED)", False, True)])
        self.applied.clear()
        self.configured("/dev/vdb (label TGSEED)")
        self.assertEqual(fb.main(), 0)
        self.assertEqual(self.applied, [("/dev/vdb (label TGSEED)", False, False)])

    def test_the_opt_in_is_one_kernel_argument(self):
        fb.reseed_requested = self.saved["reseed_requested"]
        cmdline = os.path.join(self.dir, "cmdline")
        for text, want in [
            ("root=UUID=x ro console=ttyS0 tiergate.seed=apply\n", True),
            ("root=UUID=x ro console=ttyS0\n", False),
            ("root=UUID=x tiergate.seed=applyx\n", False),
            ("root=UUID=x xtiergate.seed=apply\n", False),
        ]:
            with open(cmdline, "w") as f:
                f.write(text)
            self.assertEqual(fb.reseed_requested(cmdline), want, text)
        self.assertFalse(fb.reseed_requested(os.path.join(self.dir, "absent")))


class BootLoader(unittest.TestCase):
    def test_boot_prompt_takes_labels_only_and_offers_reseed(self):
        build = open(os.path.join(HERE, "build.sh")).read()
        conf = build.split('extlinux.conf" <<EOF', 1)[1].split("\nEOF", 1)[0]
        self.assertIn("ALLOWOPTIONS 0", conf)  # no init=/bin/sh from the console
        labels = ("\n" + conf).split("\nLABEL ")[1:]
        self.assertEqual([l.split()[0] for l in labels], ["tiergate", "reseed"])
        self.assertNotIn(fb.RESEED_ARG, labels[0])
        self.assertIn(fb.RESEED_ARG, labels[1])


if __name__ == "__main__":
    unittest.main(verbosity=2)
