import MemReplica; print(memReplicaVersion)
