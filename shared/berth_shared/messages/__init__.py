"""Message schemas on the bus (commands, replies, event payloads): the contract with other teams.

One module per service, imported as a module or from it: `from berth_shared.messages.provisioner
import VolumeCreate`. (Each service has its own `Empty`, `PREFIX`, ...: no flat re-export.)"""
