/// The transport's own copy of bytes handed to `write`: the caller's buffer
/// may change as soon as `write` returns, while the transport sends (and
/// retransmits) from this copy until the peer has it. The stream core that
/// receives it frees it.
package enum OwnedBytes {
    package static func copy(_ bytes: UnsafeRawBufferPointer) -> UnsafeMutableRawBufferPointer {
        let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 16)
        memory.copyMemory(from: bytes)
        return memory
    }

    /// A frame header and the bytes that follow it, in one allocation.
    package static func copy(header: [UInt8], body: UnsafeRawBufferPointer) -> UnsafeMutableRawBufferPointer {
        let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: header.count + body.count, alignment: 16)
        memory.copyBytes(from: header)
        UnsafeMutableRawBufferPointer(rebasing: memory[header.count...]).copyMemory(from: body)
        return memory
    }
}
