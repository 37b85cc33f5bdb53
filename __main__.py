"""`pulumi up` entry point: the program lives in llmcloud/provision/program.py."""

from llmcloud.provision.program import program

program()
