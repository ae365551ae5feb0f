extension DurableMirrorState {
    /// The record of mirror `region` in the peer's state folder.
    public convenience init(stateDirectory: StateDirectory, region: String) throws {
        try self.init(folder: stateDirectory.path + "/mirrors", region: region)
    }
}
