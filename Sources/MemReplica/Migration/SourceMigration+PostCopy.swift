import MemReplicaSystem
import MemReplicaTransportCore
import Foundation

/// Post-copy's steps on the source: the cut of the destination's
/// subscription, and the wait for the new owner's fill.
extension SourceMigration {
    /// After a post-copy hand-over: waits for the destination's second
    /// HANDED_OVER, sent once it holds every chunk. False when the stream
    /// ended without it (the source then keeps serving the new owner).
    func waitForFill(on stream: MigrationStream, generation: UInt64) async -> Bool {
        do {
            let answer = try await stream.receive(before: .now + Self.fillLimit)
            guard case .handedOver(let g) = answer, g == generation else {
                logger.warning("'\(name)': the new owner answered the post-copy fill with \(answer.name)")
                return false
            }
            return true
        } catch {
            let why = "the post-copy fill by \(request.destination) was not confirmed (\(error)); this peer keeps "
                + "serving its frozen copy to the new owner"
            logger.warning("'\(name)': \(why)")
            return false
        }
    }

    /// How long a post-copy source waits for the new owner to hold every chunk.
    static let fillLimit: Duration = .seconds(24 * 3600)

    /// Post-copy, writers frozen: the destination's subscription stops
    /// pushing and names every chunk its mirror may not hold current.
    func cutSubscription(of destination: String) async throws -> SubscriptionCut.Answer {
        let cut = exports.cutSubscription(of: name, for: destination)
        let limit = min(deadline, .now + .seconds(10))
        while true {
            if let answer = cut.answer { return answer }
            guard subscription(of: destination) != nil else {
                throw Abort(reason: "the destination's mirror went away before the post-copy cut")
            }
            guard ContinuousClock.now < limit else { throw Abort(reason: "the destination's subscription did not stop pushing") }
            try await Task.sleep(for: .microseconds(100))
        }
    }
}
