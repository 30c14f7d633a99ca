"""Message schemas on the bus (commands, replies, event payloads): the contract with other teams."""
