import MemReplicaTransportCore
import Testing

/// `Duration` in the units the reports, the emulator's clock and the gate use.
@Suite("Duration units")
struct DurationUnitsTests {
    @Test("whole nanoseconds drop sub-nanosecond parts and saturate at both ends")
    func saturatingNanoseconds() {
        #expect(Duration.milliseconds(2.5).saturatingNanoseconds == 2_500_000)
        #expect(Duration.seconds(3).saturatingNanoseconds == 3_000_000_000)
        #expect((Duration.nanoseconds(7) + .init(secondsComponent: 0, attosecondsComponent: 999_999_999)).saturatingNanoseconds == 7)
        #expect(Duration.zero.saturatingNanoseconds == 0)
        #expect(Duration.nanoseconds(-1).saturatingNanoseconds == 0)
        #expect(Duration.seconds(-5).saturatingNanoseconds == 0)
        #expect(Duration.seconds(Int64.max).saturatingNanoseconds == .max)
        // 18 446 744 073 s fits ×1e9; its 0.9999999999 s fraction carries past .max.
        #expect(Duration(secondsComponent: 18_446_744_073, attosecondsComponent: 999_999_999_999_999_999).saturatingNanoseconds == .max)
    }

    @Test("seconds and milliseconds keep the fraction")
    func fractional() {
        #expect(Duration.microseconds(1500).milliseconds == 1.5)
        #expect(Duration.milliseconds(250).seconds == 0.25)
    }
}
