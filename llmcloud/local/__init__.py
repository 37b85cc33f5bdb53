"""The local stack: Debian 12 systemd containers that stand in for cloud VMs.

They are real hosts for Ansible (systemd, sshd, apt, nftables, Docker inside), reached over SSH on
127.0.0.1, and described by the same inventory shape as an OpenStack stack.
"""
