@testable import MemReplica
@testable import MemReplicaTransportCore
import Foundation
import Testing

@Suite("Transport server with many clients", .serialized)
struct TransportManyClientsTests {
    @Test("eight clients on one server endpoint, concurrently, each with its own data", arguments: TransportKind.allCases)
    func eightClients(_ kind: TransportKind) async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let server = try kind.makeTransport(bind: PeerAddress(parsing: "127.0.0.1:0"), tls: pki.server.tls,
                                            configuration: quicConfig(server: true), logger: testLogger)
        let port = server.localAddress.port
        let echo = Task {
            await withTaskGroup(of: Void.self) { group in
                while let conn = await server.accept() {
                    group.addTask {
                        while let s = try? await conn.acceptStream() {
                            guard let bytes = try? await s.readAll(limit: 4 << 20) else { continue }
                            try? await s.write(bytes)
                            try? await s.finish()
                        }
                    }
                }
            }
        }
        // Every client exchanges its data and stays connected until all
        // have: then the server must hold exactly their eight connections.
        let clients = try await withThrowingTaskGroup(of: (transport: any Transport, connection: any TransportConnection).self) { group in
            for i in 0..<8 {
                group.addTask {
                    let client = try kind.makeTransport(bind: PeerAddress(parsing: "127.0.0.1:0"), tls: pki.client.tls,
                                                        configuration: quicConfig(server: false), logger: testLogger)
                    let conn = try await client.connect(to: PeerAddress(host: "127.0.0.1", port: port))
                    let payload = patternBytes(count: 512 << 10, seed: UInt64(i + 1))
                    let s = try await conn.openStream()
                    try await s.write(payload)
                    try await s.finish()
                    let back = try await s.readAll(limit: 1 << 20)
                    #expect(sha256Hex(back) == sha256Hex(payload))
                    return (client, conn)
                }
            }
            var all: [(transport: any Transport, connection: any TransportConnection)] = []
            for try await client in group { all.append(client) }
            return all
        }
        #expect(clients.count == 8)
        let summaries = await server.connectionSummaries()
        #expect(summaries.count == 8)
        #expect(Set(summaries.map(\.remoteAddress)).count == 8, "one connection per client: \(summaries.map(\.remoteAddress))")
        #expect(summaries.allSatisfy { $0.identity.commonName == "client" && !$0.initiatedLocally })
        #expect(summaries.allSatisfy { $0.statistics.bytesReceived >= 512 << 10 }, "each brought its 512 KiB")
        // Once the clients close, the server holds none of their connections.
        for client in clients { await client.transport.close() }
        try await withTimeout(10, "the server dropping closed connections") {
            while await !server.connectionSummaries().isEmpty { try await Task.sleep(for: .milliseconds(10)) }
        }
        await server.close()
        echo.cancel()
    }
}
