<?php
// Test oracle: prints $_POST (and $_FILES) exactly as PHP built them, in a canonical form
// that keeps int and string keys apart and every byte of every string (hex).
function enc($v) {
    if (is_array($v)) {
        $o = [];
        foreach ($v as $k => $x) {
            $o[] = [is_int($k) ? 'i' : 's', is_int($k) ? strval($k) : bin2hex($k), enc($x)];
        }
        return ['a', $o];
    }
    return ['s', bin2hex($v)];
}
$files = [];
foreach ($_FILES as $k => $f) {
    $files[] = [bin2hex($k), is_array($f['name']) ? 'array' : bin2hex($f['name']), is_array($f['size']) ? -1 : $f['size']];
}
header('Content-Type: application/json');
// Line 1: $_POST; line 2: $_FILES (kept apart so deep arrays never need parsing).
echo json_encode(enc($_POST)), "\n", json_encode($files);
