import MemReplicaHTTP3
import MemReplicaTransportCore
import Foundation

/// What a peer serves over HTTP/3 (read-only):
///
/// - `GET /stats`: the JSON of `memreplica stats --json`;
/// - `GET /regions`: every region here, as `RegionListing`s;
/// - `GET /regions/NAME/chunks/N`: the bytes of chunk N, a snapshot taken
///   when the request is answered. An export's `allow=` list applies as it
///   does to mirrors (403). A lazy replica serves only chunks it holds
///   (503 otherwise): faulting one in would tie an HTTP request to a
///   network round trip to the primary, which the client can make itself.
public struct PeerHTTP3Responder: HTTP3Responder {
    let service: PeerService

    public init(service: PeerService) { self.service = service }

    public func respond(to request: HTTP3Request) async -> HTTP3Response {
        // The query, if any, selects nothing.
        let path = request.path.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)[0]
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst().map(String.init)
        let route: Route
        switch parts.count {
        case 1 where parts[0] == "stats": route = .stats
        case 1 where parts[0] == "regions": route = .regions
        case 4 where parts[0] == "regions" && parts[2] == "chunks":
            guard let name = parts[1].removingPercentEncoding, !name.isEmpty else {
                return .text(400, "bad region name in \(request.path)")
            }
            guard let index = Int(parts[3]), index >= 0, parts[3].allSatisfy(\.isASCII) else {
                return .text(404, "no chunk '\(parts[3])': chunks are numbered from 0")
            }
            route = .chunk(region: name, index: index)
        default:
            return .text(404, "no such resource; try /stats, /regions or /regions/NAME/chunks/N")
        }
        // Read-only: every resource answers GET alone.
        guard request.method == "GET" else {
            return .text(405, "\(request.method) is not allowed: this face is read-only", headers: [("allow", "GET")])
        }
        switch route {
        case .stats: return .json(await service.statsReport(visibleTo: request.peer))
        case .regions: return .json(listing().filter { service.mayRead($0.name, role: $0.role, peer: request.peer) })
        case .chunk(let name, let index): return chunk(index, of: name, for: request.peer)
        }
    }

    private enum Route {
        case stats, regions
        case chunk(region: String, index: Int)
    }

    private func listing() -> [RegionListing] {
        let primaries = service.exports.catalog().compactMap { entry -> RegionListing? in
            guard let g = service.exports.export(named: entry.name)?.region.geometry else { return nil }
            return RegionListing(name: entry.name, role: "primary", size: g.size, chunkSize: g.chunkSize, chunks: g.chunkCount)
        }
        let replicas = service.mirrors.compactMap { runner -> RegionListing? in
            switch runner.mirror {
            case nil:
                return nil  // not connected yet: no geometry to give
            case .eager(let m)?:
                let g = m.region.geometry, p = m.currentProgress
                return RegionListing(name: runner.spec.name, role: "replica", size: g.size, chunkSize: g.chunkSize,
                                     chunks: g.chunkCount, chunksPresent: p.synced ? g.chunkCount : p.chunksPresent, lazy: false,
                                     synced: runner.synced)
            case .lazy(let m)?:
                let g = m.region.geometry
                return RegionListing(name: runner.spec.name, role: "replica", size: g.size, chunkSize: g.chunkSize,
                                     chunks: g.chunkCount, chunksPresent: m.progress.chunksPresent, lazy: true,
                                     synced: runner.synced)
            }
        }
        return primaries + replicas
    }

    private func chunk(_ index: Int, of name: String, for peer: PeerIdentity) -> HTTP3Response {
        let region: Region
        // A peer the rules leave out hears what it would of a region that
        // does not exist: a 403 would confirm the name.
        if let export = service.exports.export(named: name) {
            guard export.allow.permits(peer) else { return .text(404, "no region named '\(name)' on this peer") }
            region = export.region
        } else if let runner = service.mirrors.first(where: { $0.spec.name == name }) {
            guard runner.servingRule.permits(peer) else { return .text(404, "no region named '\(name)' on this peer") }
            // Only current bytes leave a replica: while it is not synced
            // with its primary, what it holds may be stale or incomplete.
            guard runner.synced else {
                return .text(503, "replica '\(name)' is not synced with its primary: its bytes may not be current",
                             headers: [("retry-after", "1")])
            }
            switch runner.mirror {
            case nil:
                return .text(503, "replica '\(name)' has not reached its primary yet", headers: [("retry-after", "1")])
            case .eager(let m)?:
                region = m.region
            case .lazy(let m)?:
                guard index < m.region.geometry.chunkCount else { return outOfRange(index, m.region) }
                guard m.isChunkPresent(index) else {
                    return .text(503, "chunk \(index) of lazy replica '\(name)' is not here yet", headers: [("retry-after", "1")])
                }
                region = m.region
            }
        } else {
            return .text(404, "no region named '\(name)' on this peer")
        }
        guard index < region.geometry.chunkCount else { return outOfRange(index, region) }
        do {
            return HTTP3Response(status: 200, contentType: "application/octet-stream", body: try region.copyChunk(index))
        } catch {
            return .text(500, "cannot read chunk \(index) of '\(name)': \(error)")
        }
    }

    private func outOfRange(_ index: Int, _ region: Region) -> HTTP3Response {
        .text(404, "chunk \(index) is outside '\(region.name)' (\(region.geometry.chunkCount) chunks)")
    }
}
