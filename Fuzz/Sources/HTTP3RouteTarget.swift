@testable import MemReplica
@testable import MemReplicaHTTP3
@testable import MemReplicaTransportCore
import Foundation

/// The peer's HTTP/3 requests (HTTP3/HTTP3RequestStream.swift's head
/// checks, then Peer/PeerHTTP3Responder.swift's routes) for a method and
/// path, from one of three clients: "reader" (on "closed"'s allow list),
/// "stranger", and one whose certificate has no common name. The first
/// byte picks the client; the method runs to the first newline, the path
/// is the rest. Every answer must hold (`HTTP3Answers.check`); a region a
/// client may not read answers as if it did not exist (404).
struct HTTP3RouteTarget: FuzzTarget {
    let fixture = FuzzFixture.shared

    mutating func run(_ input: [UInt8]) {
        guard let selector = input.first else { return }
        let rest = input.dropFirst()
        let cut = rest.firstIndex(of: 0x0A) ?? rest.endIndex
        let method = Array(rest[rest.startIndex..<cut]), path = Array(rest[min(cut + 1, rest.endIndex)...])
        let stream = HTTP3RequestStream(id: 0, overLimit: false)
        method.withUnsafeBytes { value in Array(":method".utf8).withUnsafeBytes { stream.add(name: $0, value: value) } }
        path.withUnsafeBytes { value in Array(":path".utf8).withUnsafeBytes { stream.add(name: $0, value: value) } }
        HTTP3Answers.answer(stream, peer: HTTP3Answers.peers[Int(selector) % HTTP3Answers.peers.count], fixture: fixture)
    }
}

/// What every answer of the HTTP/3 face must be, whatever was asked.
enum HTTP3Answers {
    static let peers = [
        PeerIdentity(subject: "CN=reader,O=memreplica", commonName: "reader", alternativeNames: ["reader"],
                     fingerprint: String(repeating: "a1", count: 32)),
        PeerIdentity(subject: "CN=stranger,O=memreplica", commonName: "stranger", alternativeNames: [],
                     fingerprint: String(repeating: "b2", count: 32)),
        PeerIdentity(subject: "O=memreplica", commonName: nil, alternativeNames: [], fingerprint: String(repeating: "c3", count: 32)),
    ]

    /// The request's answer: a refusal of its head, or the responder's;
    /// checked, and returned for the stream target to send.
    @discardableResult
    static func answer(_ stream: HTTP3RequestStream, peer: PeerIdentity, fixture: FuzzFixture) -> HTTP3Response {
        switch stream.request(from: peer) {
        case .failure(let rejected):
            guard [400, 414, 431, 503].contains(rejected.response.status) else {
                fuzzFailure("a request head refused with \(rejected.response.status)")
            }
            return rejected.response
        case .success(let request):
            let responder = PeerHTTP3Responder(service: fixture.service)
            let response = runBlocking { await responder.respond(to: request) }
            check(response, to: request, fixture: fixture)
            return response
        }
    }

    static func check(_ response: HTTP3Response, to request: HTTP3Request, fixture: FuzzFixture) {
        guard [200, 400, 403, 404, 405, 503].contains(response.status) else {
            fuzzFailure("status \(response.status) for \(request.method) \(request.path)")
        }
        guard response.status == 200 else {
            guard response.contentType.hasPrefix("text/plain"), !response.body.isEmpty else {
                fuzzFailure("a \(response.status) without a text reason")
            }
            return
        }
        guard request.method == "GET" else { fuzzFailure("200 for \(request.method) \(request.path)") }
        let target = request.path.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)[0]
        if target == "/stats" || target == "/regions" {
            guard (try? JSONSerialization.jsonObject(with: Data(response.body))) != nil else {
                fuzzFailure("\(target) answered with JSON that does not parse")
            }
            return
        }
        // A chunk: its region's bytes, only to a peer the region allows.
        let parts = target.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 5, parts[1] == "regions", parts[3] == "chunks",
              let name = String(parts[2]).removingPercentEncoding, let index = Int(parts[4]) else {
            fuzzFailure("200 for \(request.path), which names no chunk")
        }
        let region: Region
        switch name {
        case "open": region = fixture.open
        case "closed":
            guard request.peer.commonName == "reader" else { fuzzFailure("'closed' served to \(request.peer.subject)") }
            region = fixture.closed
        default: fuzzFailure("200 for chunk \(index) of '\(name)', no such region")
        }
        guard index >= 0, index < region.geometry.chunkCount, let expected = try? region.copyChunk(index), response.body == expected else {
            fuzzFailure("chunk \(index) of '\(name)' answered with other bytes (\(response.body.count))")
        }
    }
}
