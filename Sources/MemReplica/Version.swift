public let memReplicaVersion = "0.1.0"
