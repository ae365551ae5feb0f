@testable import MemReplica
import Testing

@Suite("JSON parser for config files")
struct JSONParserTests {
    private func parse(_ text: String) throws -> JSONValue { try JSONParser.parse(Array(text.utf8)) }

    private func syntaxError(_ text: String) -> String? {
        do {
            _ = try JSONParser.parse(Array(text.utf8))
            return nil
        } catch {
            return error.description
        }
    }

    @Test("values of every kind, with keys in file order")
    func everyKind() throws {
        let value = try parse(#" { "z": [1, -2.5e+3, 0], "a": {"t": true, "f": false, "n": null}, "s": "x" } "#)
        #expect(value == .object(keys: ["z", "a", "s"], values: [
            "z": .array([.number("1"), .number("-2.5e+3"), .number("0")]),
            "a": .object(keys: ["t", "f", "n"], values: ["t": .bool(true), "f": .bool(false), "n": .null]),
            "s": .string("x"),
        ]))
        #expect(try parse("[]") == .array([]))
        #expect(try parse("{}") == .object(keys: [], values: [:]))
    }

    @Test("string escapes, including a surrogate pair, and UTF-8 as is")
    func escapes() throws {
        #expect(try parse(#""a\"b\\c\/d\b\f\n\r\t""#) == .string("a\"b\\c/d\u{8}\u{c}\n\r\t"))
        #expect(try parse(#""\u00e9\uD83D\uDE00 é""#) == .string("é😀 é"))
    }

    @Test("a UTF-8 byte order mark is skipped")
    func byteOrderMark() throws {
        #expect(try JSONParser.parse([0xEF, 0xBB, 0xBF] + Array("{}".utf8)) == .object(keys: [], values: [:]))
    }

    @Test("syntax errors give line and column", arguments: [
        ("{\n  \"a\": 1,\n}", "3:1: expected a key in double quotes, found '}'"),
        ("[1, 2,]", "1:7: expected a value, found ']'"),
        ("{\"a\" 1}", "1:6: expected ':' after the key, found '1'"),
        ("{\"a\": 1 \"b\": 2}", "1:9: expected ',' or '}' in an object, found '\"'"),
        ("[1 2]", "1:4: expected ',' or ']' in an array, found '2'"),
        ("{\"listen\": \":1\", \"listen\": \":2\"}", "1:18: key \"listen\" appears twice in this object"),
        ("{\"a\": tru}", "1:7: expected a value (true, false, null, a number, a string, [ or {)"),
        ("{\"a\": \"x", "1:7: unterminated string"),
        ("\"a\tb\"", "1:3: control character in a string (write it as an escape)"),
        (#""\x""#, #"1:2: unknown escape '\x'"#),
        (#""\u12""#, #"1:6: \u needs four hex digits"#),
        (#""\uDC00""#, #"1:2: \u escape is a lone surrogate"#),
        (#""\uD800x""#, #"1:2: a \u high surrogate must be followed by a low one"#),
        ("012", "1:1: numbers do not start with 0"),
        ("1.", "1:3: expected a digit after '.'"),
        ("-", "1:2: expected a digit"),
        ("1e", "1:3: expected a digit in the exponent"),
        ("{} {}", "1:4: unexpected text after the JSON value"),
        ("", "1:1: unexpected end of file, expected a value"),
        ("  \n é", "2:2: expected a value, found byte 0xc3"),
        (String(repeating: "[", count: 65), "1:65: nested more than 64 deep"),
    ])
    func syntaxErrors(text: String, message: String) {
        #expect(syntaxError(text) == message)
    }

    @Test("64 levels of nesting are fine")
    func deepButAllowed() throws {
        #expect(throws: Never.self) { try parse(String(repeating: "[", count: 64) + String(repeating: "]", count: 64)) }
    }

    @Test("bytes that are not UTF-8 are refused with their position")
    func notUTF8() {
        #expect(throws: JSONParser.SyntaxError(line: 2, column: 3, message: "the file is not UTF-8 text")) {
            try JSONParser.parse(Array("{\n\"é".utf8) + [0xFF] + Array("\": 1}".utf8))
        }
    }
}
