import Foundation
import MemReplicaHTTP3

extension HTTP3Response {
    /// A JSON answer, encoded as `memreplica stats --json` prints (ISO 8601
    /// dates, sorted keys).
    public static func json(_ value: some Encodable) -> HTTP3Response {
        do {
            let data = try StatusReport.makeEncoder(pretty: true).encode(value)
            return HTTP3Response(status: 200, contentType: "application/json", body: Array(data) + [0x0a])
        } catch {
            return .text(500, "cannot encode the answer: \(error)")
        }
    }
}
