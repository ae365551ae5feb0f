import Foundation

/// Number formatting for people: precision that matches the magnitude.
enum Format {
    static func milliseconds(_ ms: Double, unit: Bool = true) -> String {
        let digits = ms < 1 ? 3 : ms < 100 ? 2 : 1
        return String(format: "%.\(digits)f", ms) + (unit ? " ms" : "")
    }

    static func seconds(_ s: Double) -> String {
        s < 1 ? milliseconds(s * 1000) : String(format: "%g s", s)
    }

    static func bytes(_ count: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(count)
        var index = 0
        while value >= 1024, index < units.count - 1 {
            value /= 1024
            index += 1
        }
        return index == 0 ? "\(count) B" : String(format: "%.1f %@", value, units[index])
    }

    static func uptime(_ seconds: Double) -> String {
        let total = Int(seconds)
        let (d, h, m, s) = (total / 86400, total / 3600 % 24, total / 60 % 60, total % 60)
        if d > 0 { return "\(d)d \(h)h \(m)m" }
        if h > 0 { return "\(h)h \(m)m \(s)s" }
        if m > 0 { return "\(m)m \(s)s" }
        return "\(s)s"
    }
}
