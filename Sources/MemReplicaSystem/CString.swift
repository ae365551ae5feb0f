/// A Swift string from a NUL-terminated C buffer we own.
package func stringFromCBuffer(_ buffer: [CChar]) -> String {
    buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
}
