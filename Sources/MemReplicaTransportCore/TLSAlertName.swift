package func tlsAlertName(_ alert: UInt8) -> String {
    switch alert {
    case 40: return "handshake_failure"
    case 42: return "bad_certificate"
    case 43: return "unsupported_certificate"
    case 44: return "certificate_revoked"
    case 45: return "certificate_expired"
    case 46: return "certificate_unknown"
    case 48: return "unknown_ca"
    case 49: return "access_denied"
    case 70: return "protocol_version"
    case 80: return "internal_error"
    case 109: return "missing_extension"
    case 116: return "certificate_required"
    case 120: return "no_application_protocol"
    default: return "alert \(alert)"
    }
}
