@testable import MemReplica
import LinuxShim
import Foundation

/// Control-socket requests as the control server decodes them
/// (Control/ControlRequest.swift, Attach.swift) and the peer's attach
/// decision (PeerService.attach), without a socket. The first input byte
/// chooses whether a fresh userfaultfd comes with the request (bit 0) and
/// whether the peer service or the lazy mirror decides (bit 1); the rest is
/// the request line. For any request:
/// - decoding throws or gives a request; an attach is accepted or refused
///   with a reason, never a crash;
/// - a refused attach leaves this process's descriptor count unchanged,
///   and an accepted one does once detached (within 2 s: a lazy mirror's
///   fault thread closes the descriptor when it next wakes).
struct ControlTarget: FuzzTarget {
    let fixture = FuzzFixture.shared

    mutating func run(_ input: [UInt8]) {
        guard let flags = input.first else { return }
        let line = Data(input.dropFirst())
        guard let request = try? JSONDecoder().decode(ControlRequest.self, from: line), request.command == "attach" else { return }
        guard let attach = try? JSONDecoder().decode(AttachRequest.self, from: line) else { return }
        let before = openDescriptorCount()
        var descriptor: Int32?
        if flags & 1 != 0 {
            let uffd = qs_uffd_open(0)
            guard uffd >= 0 else { fuzzFailure("cannot open a userfaultfd") }
            descriptor = uffd
        }
        let process = AttachingProcess(pid: getpid(), userfaultfd: descriptor)
        let outcome = flags & 2 == 0
            ? fixture.service.attach(attach, from: process)
            : PeerService.attach(attach, from: process, toLazy: fixture.lazy, logger: fixture.logger)
        switch outcome {
        case .refused(let reason):
            guard !reason.isEmpty, !reason.contains("\n") else { fuzzFailure("a refusal without a one-line reason: \(reason)") }
            // The control server closes the descriptor of a refused attach.
            if let descriptor { close(descriptor) }
        case .accepted(let answer, let detach):
            // The lazy mirror's decision is called for its own region, whatever the name.
            guard answer.region == attach.region || flags & 2 != 0 else {
                fuzzFailure("answered for '\(answer.region)', asked '\(attach.region)'")
            }
            if let detach {
                detach()
            } else if let descriptor {
                guard !answer.attached else { fuzzFailure("attached without a session") }
                close(descriptor)
            }
        }
        // A lazy mirror's fault thread closes a detached client's descriptor
        // when it next wakes (MissingFaultHandler.removeClient): wait for it.
        var after = openDescriptorCount()
        let deadline = ContinuousClock.now + .seconds(2)
        while after != before, ContinuousClock.now < deadline {
            usleep(1000)
            after = openDescriptorCount()
        }
        guard after == before else { fuzzFailure("the attach changed the descriptor count from \(before) to \(after): \(outcome)") }
    }
}
