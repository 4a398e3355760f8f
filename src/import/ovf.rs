//! The parts of an OVF descriptor (DMTF DSP0243, versions 1 and 2) an
//! import needs: the files and disks, and the virtual hardware of the one
//! virtual system (CPUs, memory, disk controllers, disks, NICs, firmware).
//!
//! Elements and attributes are matched by local name, so both the
//! `ovf:`-prefixed 1.x form and 2.x's `StorageItem`/`EthernetPortItem`
//! read the same; what the import cannot use (sound cards, USB, floppies)
//! is skipped. Each error names the element, with its line and column,
//! and what was expected.

use std::collections::BTreeMap;

use roxmltree::{Document, Node};

use crate::model::vm::{DiskBus, Firmware, NicModel};

/// An OVF descriptor, read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ovf {
    /// The virtual system's `Name` (or its `ovf:id`).
    pub name: Option<String>,
    /// Its `AnnotationSection`/`Annotation` or `ProductSection`/`Product`.
    pub description: Option<String>,
    /// Virtual CPUs (`rasd:ResourceType` 3).
    pub cpus: Option<u64>,
    /// Memory in bytes (`rasd:ResourceType` 4).
    pub memory: Option<u64>,
    /// `efi` in VMware's `vmw:Config firmware` or VirtualBox's
    /// `Firmware`, else BIOS.
    pub firmware: Option<Firmware>,
    /// Disks in the order of the hardware section (boot disk first),
    /// then any disk of `DiskSection` no item names.
    pub disks: Vec<Disk>,
    /// NICs (`rasd:ResourceType` 10) in order.
    pub nics: Vec<Nic>,
}

/// A disk of the virtual system.
#[derive(Debug, Clone, PartialEq)]
pub struct Disk {
    /// `ovf:diskId`.
    pub id: String,
    /// The file holding its content (`ovf:fileRef` → `References/File`);
    /// `None`: a blank disk of `capacity`.
    pub file: Option<FileRef>,
    /// Capacity in bytes (`ovf:capacity` × `ovf:capacityAllocationUnits`).
    pub capacity: Option<u64>,
    /// The controller it hangs off, mapped to a deorch bus.
    pub bus: Option<DiskBus>,
    /// The controller as the OVF describes it (e.g. `SCSI lsilogic`).
    pub controller: Option<String>,
}

/// A file of the package (`References/File`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// `ovf:id`.
    pub id: String,
    /// `ovf:href`: a path relative to the descriptor.
    pub href: String,
    /// `ovf:size`, when given.
    pub size: Option<u64>,
}

/// A network adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// `rasd:ElementName` (e.g. `Ethernet 1`).
    pub label: Option<String>,
    /// `rasd:Connection`: the OVF network it joins.
    pub network: Option<String>,
    /// `rasd:ResourceSubType` as written (`E1000`, `VmxNet3`, ...).
    pub subtype: Option<String>,
    /// The deorch model closest to it.
    pub model: NicModel,
    /// `rasd:Address`, when it is a MAC address.
    pub mac: Option<String>,
}

/// Bad OVF input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{col}: {element}: {message}")]
pub struct OvfError {
    /// Line of the element (1-based).
    pub line: u32,
    /// Column of the element (1-based).
    pub col: u32,
    /// The element (its local name, with a qualifier such as the item's
    /// resource type).
    pub element: String,
    /// What is wrong and what was expected.
    pub message: String,
}

fn err(doc: &Document, n: Node, element: impl Into<String>, message: String) -> OvfError {
    let pos = doc.text_pos_at(n.range().start);
    OvfError {
        line: pos.row,
        col: pos.col,
        element: element.into(),
        message,
    }
}

fn child<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn children<'a, 'i>(n: Node<'a, 'i>, name: &'a str) -> impl Iterator<Item = Node<'a, 'i>> + 'a {
    n.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == name)
}

/// An attribute by local name, whatever its namespace (`ovf:id` or `id`).
fn attr<'a>(n: Node<'a, '_>, name: &str) -> Option<&'a str> {
    n.attributes().find(|a| a.name() == name).map(|a| a.value())
}

fn text<'a>(n: Node<'a, '_>, name: &str) -> Option<&'a str> {
    child(n, name)
        .and_then(|c| c.text())
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Bytes per unit of an OVF allocation unit: DSP0004's programmatic units
/// (`byte`, `byte * 2^20`, `byte * 10^6`, `bytes*1024`) and the names some
/// exporters write (`MegaBytes`, `MB`, `GigaBytes`, `KB`).
pub fn byte_units(units: &str) -> Option<u64> {
    let u: String = units.chars().filter(|c| !c.is_whitespace()).collect();
    let lower = u.to_ascii_lowercase();
    let named = match lower.as_str() {
        "byte" | "bytes" | "b" => Some(1),
        "kilobytes" | "kb" | "kib" => Some(1 << 10),
        "megabytes" | "mb" | "mib" => Some(1 << 20),
        "gigabytes" | "gb" | "gib" => Some(1 << 30),
        "terabytes" | "tb" | "tib" => Some(1 << 40),
        _ => None,
    };
    if named.is_some() {
        return named;
    }
    let rest = lower
        .strip_prefix("bytes")
        .or_else(|| lower.strip_prefix("byte"))?;
    let mut factor: u64 = 1;
    for term in rest.split('*').skip(1) {
        let f = match term.split_once('^') {
            Some((base, exp)) => {
                let base: u64 = base.parse().ok()?;
                let exp: u32 = exp.parse().ok()?;
                base.checked_pow(exp)?
            }
            None => term.parse().ok()?,
        };
        factor = factor.checked_mul(f)?;
    }
    if !rest.is_empty() && !rest.starts_with('*') {
        return None;
    }
    Some(factor)
}

/// Read the descriptor `xml`.
pub fn parse(xml: &str) -> Result<Ovf, OvfError> {
    let doc = Document::parse(xml).map_err(|e| {
        let p = e.pos();
        OvfError {
            line: p.row,
            col: p.col,
            element: "XML".into(),
            message: format!("not well-formed: {e}"),
        }
    })?;
    let env = doc.root_element();
    if env.tag_name().name() != "Envelope" {
        return Err(err(
            &doc,
            env,
            env.tag_name().name(),
            "the root element must be an OVF Envelope".into(),
        ));
    }
    let files = references(&doc, env)?;
    let mut disks = disk_section(&doc, env, &files)?;
    let vs = match child(env, "VirtualSystem") {
        Some(vs) => vs,
        None => {
            let what = if child(env, "VirtualSystemCollection").is_some() {
                "a VirtualSystemCollection (several VMs) is not imported: import one VM per OVF"
            } else {
                "no VirtualSystem element (expected one under Envelope)"
            };
            return Err(err(&doc, env, "Envelope", what.into()));
        }
    };
    let mut ovf = Ovf {
        name: text(vs, "Name")
            .or_else(|| attr(vs, "id"))
            .map(str::to_string),
        description: child(vs, "AnnotationSection")
            .and_then(|s| text(s, "Annotation"))
            .or_else(|| child(vs, "ProductSection").and_then(|s| text(s, "Product")))
            .map(str::to_string),
        ..Default::default()
    };
    let hw = child(vs, "VirtualHardwareSection").ok_or_else(|| {
        err(
            &doc,
            vs,
            "VirtualSystem",
            "no VirtualHardwareSection (expected the VM's CPUs, memory, disks and NICs there)"
                .into(),
        )
    })?;
    hardware(&doc, hw, &mut ovf, &mut disks)?;
    // Disks in hardware order; disks no item attaches come last, without
    // a bus.
    let mut ordered: Vec<Disk> = Vec::new();
    for id in std::mem::take(&mut ovf.disks).into_iter().map(|d| d.id) {
        if let Some(d) = disks.remove(&id) {
            ordered.push(d);
        }
    }
    ordered.extend(disks.into_values());
    ovf.disks = ordered;
    Ok(ovf)
}

fn references(doc: &Document, env: Node) -> Result<BTreeMap<String, FileRef>, OvfError> {
    let mut files = BTreeMap::new();
    let Some(refs) = child(env, "References") else {
        return Ok(files);
    };
    for f in children(refs, "File") {
        let id = attr(f, "id")
            .ok_or_else(|| err(doc, f, "References/File", "no ovf:id attribute".into()))?;
        let href = attr(f, "href").ok_or_else(|| {
            err(
                doc,
                f,
                "References/File",
                format!("file {id:?} has no ovf:href"),
            )
        })?;
        if href.contains("://") {
            return Err(err(
                doc,
                f,
                "References/File",
                format!("file {id:?} is a URL ({href}): only files of the package are imported"),
            ));
        }
        if href.starts_with('/') || href.split(['/', '\\']).any(|p| p == "..") {
            return Err(err(
                doc,
                f,
                "References/File",
                format!(
                    "file {id:?}: href {href:?} leaves the package (expected a relative path inside it)"
                ),
            ));
        }
        let size = match attr(f, "size") {
            None => None,
            Some(s) => Some(s.trim().parse::<u64>().map_err(|_| {
                err(
                    doc,
                    f,
                    "References/File",
                    format!("file {id:?}: ovf:size {s:?} is not a number of bytes"),
                )
            })?),
        };
        if files
            .insert(
                id.to_string(),
                FileRef {
                    id: id.to_string(),
                    href: href.to_string(),
                    size,
                },
            )
            .is_some()
        {
            return Err(err(
                doc,
                f,
                "References/File",
                format!("ovf:id {id:?} is used twice"),
            ));
        }
    }
    Ok(files)
}

fn disk_section(
    doc: &Document,
    env: Node,
    files: &BTreeMap<String, FileRef>,
) -> Result<BTreeMap<String, Disk>, OvfError> {
    let mut disks = BTreeMap::new();
    let Some(sec) = child(env, "DiskSection") else {
        return Ok(disks);
    };
    for d in children(sec, "Disk") {
        let id = attr(d, "diskId")
            .ok_or_else(|| err(doc, d, "DiskSection/Disk", "no ovf:diskId attribute".into()))?;
        let file = match attr(d, "fileRef") {
            None => None,
            Some(r) => Some(files.get(r).cloned().ok_or_else(|| {
                err(
                    doc,
                    d,
                    "DiskSection/Disk",
                    format!(
                        "disk {id:?}: ovf:fileRef {r:?} names no References/File (files: {})",
                        files.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )
            })?),
        };
        let capacity = match attr(d, "capacity") {
            None => None,
            Some(c) => {
                let units = attr(d, "capacityAllocationUnits").unwrap_or("byte");
                let bad =
                    |what: String| err(doc, d, "DiskSection/Disk", format!("disk {id:?}: {what}"));
                let n: u64 = c.trim().parse().map_err(|_| {
                    bad(format!(
                        "ovf:capacity {c:?} is not a whole number (a ${{property}} reference is not supported)"
                    ))
                })?;
                let unit = byte_units(units).ok_or_else(|| {
                    bad(format!(
                        "ovf:capacityAllocationUnits {units:?} is not a unit of bytes (expected e.g. \"byte * 2^30\")"
                    ))
                })?;
                Some(
                    n.checked_mul(unit)
                        .ok_or_else(|| bad("capacity overflows".into()))?,
                )
            }
        };
        if file.is_none() && capacity.is_none() {
            return Err(err(
                doc,
                d,
                "DiskSection/Disk",
                format!("disk {id:?} has neither ovf:fileRef nor ovf:capacity"),
            ));
        }
        disks.insert(
            id.to_string(),
            Disk {
                id: id.to_string(),
                file,
                capacity,
                bus: None,
                controller: None,
            },
        );
    }
    Ok(disks)
}

/// The virtual hardware: fills `ovf`'s CPUs, memory, firmware, NICs, and
/// (only their ids, in order) disks; sets each of `disks`' bus.
fn hardware(
    doc: &Document,
    hw: Node,
    ovf: &mut Ovf,
    disks: &mut BTreeMap<String, Disk>,
) -> Result<(), OvfError> {
    let items: Vec<Node> = hw
        .children()
        .filter(|c| {
            c.is_element()
                && matches!(
                    c.tag_name().name(),
                    "Item" | "StorageItem" | "EthernetPortItem"
                )
        })
        .collect();
    // Controllers by InstanceID: (bus, description).
    let mut controllers: BTreeMap<String, (Option<DiskBus>, String)> = BTreeMap::new();
    for it in &items {
        let rt = resource_type(doc, *it)?;
        let sub = text(*it, "ResourceSubType").unwrap_or("");
        let bus = match rt {
            5 => Some(DiskBus::Ide),
            6 => Some(DiskBus::Scsi),
            // "Other storage device": SATA (AHCI), NVMe, virtio.
            20 => {
                let s = sub.to_ascii_lowercase();
                if s.contains("ahci") || s.contains("sata") {
                    Some(DiskBus::Sata)
                } else if s.contains("virtio") {
                    Some(DiskBus::Virtio)
                } else {
                    None
                }
            }
            _ => continue,
        };
        let name = match rt {
            5 => "IDE",
            6 => "SCSI",
            _ => "storage",
        };
        if let Some(id) = text(*it, "InstanceID") {
            let desc = if sub.is_empty() {
                name.to_string()
            } else {
                format!("{name} {sub}")
            };
            controllers.insert(id.to_string(), (bus, desc));
        }
    }
    let mut order = Vec::new();
    for it in &items {
        let rt = resource_type(doc, *it)?;
        match rt {
            3 => {
                let what = "Item (ResourceType 3, CPU)";
                let q = quantity(doc, *it, what)?;
                if q == 0 {
                    return Err(err(
                        doc,
                        *it,
                        what,
                        "VirtualQuantity is 0 (expected at least 1 CPU)".into(),
                    ));
                }
                ovf.cpus = Some(q);
            }
            4 => {
                let what = "Item (ResourceType 4, memory)";
                let q = quantity(doc, *it, what)?;
                let units = text(*it, "AllocationUnits").unwrap_or("byte * 2^20");
                let unit = byte_units(units).ok_or_else(|| {
                    err(
                        doc,
                        *it,
                        what,
                        format!("AllocationUnits {units:?} is not a unit of bytes (expected e.g. \"byte * 2^20\" or \"MegaBytes\")"),
                    )
                })?;
                let bytes = q
                    .checked_mul(unit)
                    .ok_or_else(|| err(doc, *it, what, "memory size overflows".into()))?;
                if bytes < 1 << 20 {
                    return Err(err(
                        doc,
                        *it,
                        what,
                        format!("{bytes} bytes of memory (expected at least 1 MiB; are AllocationUnits right?)"),
                    ));
                }
                ovf.memory = Some(bytes);
            }
            10 => {
                let sub = text(*it, "ResourceSubType").map(str::to_string);
                let model = match sub.as_deref().map(str::to_ascii_lowercase).as_deref() {
                    Some(s) if s.starts_with("e1000") => NicModel::E1000,
                    Some(s) if s.contains("8139") => NicModel::Rtl8139,
                    _ => NicModel::Virtio,
                };
                let mac = text(*it, "Address")
                    .filter(|a| is_mac(a))
                    .map(str::to_ascii_lowercase);
                ovf.nics.push(Nic {
                    label: text(*it, "ElementName").map(str::to_string),
                    network: text(*it, "Connection").map(str::to_string),
                    subtype: sub,
                    model,
                    mac,
                });
            }
            17 => {
                let what = "Item (ResourceType 17, disk)";
                let host = text(*it, "HostResource").ok_or_else(|| {
                    err(
                        doc,
                        *it,
                        what,
                        "no HostResource (expected ovf:/disk/ID)".into(),
                    )
                })?;
                let id = host
                    .strip_prefix("ovf:/disk/")
                    .or_else(|| host.strip_prefix("/disk/"))
                    .ok_or_else(|| {
                        err(
                            doc,
                            *it,
                            what,
                            format!("HostResource {host:?} is not a disk reference (expected ovf:/disk/ID; ovf:/file/ID is not supported)"),
                        )
                    })?;
                let disk = disks.get_mut(id).ok_or_else(|| {
                    err(
                        doc,
                        *it,
                        what,
                        format!("HostResource {host:?} names no DiskSection/Disk"),
                    )
                })?;
                if let Some((bus, desc)) = text(*it, "Parent").and_then(|p| controllers.get(p)) {
                    disk.bus = *bus;
                    disk.controller = Some(desc.clone());
                }
                order.push(id.to_string());
            }
            _ => {}
        }
    }
    ovf.disks = order
        .into_iter()
        .map(|id| Disk {
            id,
            file: None,
            capacity: None,
            bus: None,
            controller: None,
        })
        .collect();
    ovf.firmware = firmware(hw);
    Ok(())
}

fn resource_type(doc: &Document, it: Node) -> Result<u32, OvfError> {
    let t = text(it, "ResourceType").ok_or_else(|| {
        err(
            doc,
            it,
            it.tag_name().name(),
            "no ResourceType (expected a CIM resource type number)".into(),
        )
    })?;
    t.parse().map_err(|_| {
        err(
            doc,
            it,
            it.tag_name().name(),
            format!("ResourceType {t:?} is not a number"),
        )
    })
}

fn quantity(doc: &Document, it: Node, what: &str) -> Result<u64, OvfError> {
    let q = text(it, "VirtualQuantity")
        .ok_or_else(|| err(doc, it, what, "no VirtualQuantity".into()))?;
    q.parse().map_err(|_| {
        err(
            doc,
            it,
            what,
            format!("VirtualQuantity {q:?} is not a whole number"),
        )
    })
}

/// VMware's `<vmw:Config vmw:key="firmware" vmw:value="efi"/>` or a
/// `Firmware`-like element saying EFI.
fn firmware(hw: Node) -> Option<Firmware> {
    for c in hw.descendants().filter(|c| c.is_element()) {
        if c.tag_name().name() == "Config" && attr(c, "key") == Some("firmware") {
            return match attr(c, "value").map(str::to_ascii_lowercase).as_deref() {
                Some("efi") => Some(Firmware::Uefi),
                Some("bios") => Some(Firmware::Bios),
                _ => None,
            };
        }
    }
    None
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OVF: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
  xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References>
    <File ovf:id="f1" ovf:href="a.vmdk" ovf:size="100"/>
    <File ovf:id="f2" ovf:href="b.vmdk"/>
  </References>
  <DiskSection><Info>d</Info>
    <Disk ovf:diskId="data" ovf:fileRef="f2" ovf:capacity="2" ovf:capacityAllocationUnits="byte * 2^30"/>
    <Disk ovf:diskId="boot" ovf:fileRef="f1" ovf:capacity="1073741824"/>
    <Disk ovf:diskId="scratch" ovf:capacity="512" ovf:capacityAllocationUnits="MegaBytes"/>
  </DiskSection>
  <VirtualSystem ovf:id="web">
    <Name>web server</Name>
    <VirtualHardwareSection>
      <Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>4</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>2048</rasd:VirtualQuantity></Item>
      <Item><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceType>6</rasd:ResourceType><rasd:ResourceSubType>lsilogic</rasd:ResourceSubType></Item>
      <Item><rasd:InstanceID>4</rasd:InstanceID><rasd:ResourceType>20</rasd:ResourceType><rasd:ResourceSubType>vmware.sata.ahci</rasd:ResourceSubType></Item>
      <Item><rasd:HostResource>ovf:/disk/boot</rasd:HostResource><rasd:InstanceID>5</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:HostResource>ovf:/disk/data</rasd:HostResource><rasd:InstanceID>6</rasd:InstanceID><rasd:Parent>4</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:Address>00:50:56:AA:BB:CC</rasd:Address><rasd:Connection>VM Network</rasd:Connection><rasd:ElementName>eth0</rasd:ElementName><rasd:InstanceID>7</rasd:InstanceID><rasd:ResourceSubType>E1000</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
      <Item><rasd:Connection>backend</rasd:Connection><rasd:InstanceID>8</rasd:InstanceID><rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>"#;

    #[test]
    fn reads_hardware_disks_and_nics() {
        let o = parse(OVF).unwrap();
        assert_eq!(o.name.as_deref(), Some("web server"));
        assert_eq!(o.cpus, Some(4));
        assert_eq!(o.memory, Some(2048 << 20));
        assert_eq!(o.firmware, Some(Firmware::Uefi));
        let ids: Vec<&str> = o.disks.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["boot", "data", "scratch"], "hardware order first");
        assert_eq!(o.disks[0].bus, Some(DiskBus::Scsi));
        assert_eq!(o.disks[0].file.as_ref().unwrap().href, "a.vmdk");
        assert_eq!(o.disks[1].bus, Some(DiskBus::Sata));
        assert_eq!(o.disks[1].capacity, Some(2 << 30));
        assert_eq!(o.disks[2].file, None);
        assert_eq!(o.disks[2].capacity, Some(512 << 20));
        assert_eq!(o.nics.len(), 2);
        assert_eq!(o.nics[0].model, NicModel::E1000);
        assert_eq!(o.nics[0].mac.as_deref(), Some("00:50:56:aa:bb:cc"));
        assert_eq!(o.nics[0].network.as_deref(), Some("VM Network"));
        assert_eq!(o.nics[1].model, NicModel::Virtio);
        assert_eq!(o.nics[1].subtype.as_deref(), Some("VmxNet3"));
    }

    #[test]
    fn units() {
        assert_eq!(byte_units("byte * 2^20"), Some(1 << 20));
        assert_eq!(byte_units("byte*2^30"), Some(1 << 30));
        assert_eq!(byte_units("byte * 10^6"), Some(1_000_000));
        assert_eq!(byte_units("bytes * 1024"), Some(1024));
        assert_eq!(byte_units("MegaBytes"), Some(1 << 20));
        assert_eq!(byte_units("byte"), Some(1));
        assert_eq!(byte_units("hertz * 10^6"), None);
        assert_eq!(byte_units("bytesx"), None);
    }

    #[test]
    fn errors_name_the_element_and_its_line() {
        let bad = OVF.replace(
            "<rasd:VirtualQuantity>4</rasd:VirtualQuantity>",
            "<rasd:VirtualQuantity>four</rasd:VirtualQuantity>",
        );
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.element, "Item (ResourceType 3, CPU)");
        assert_eq!(e.line, 17, "{e}");
        assert!(e.message.contains("\"four\" is not a whole number"), "{e}");

        let bad = OVF.replace("ovf:/disk/data", "ovf:/disk/nope");
        let e = parse(&bad).unwrap_err();
        assert!(e.to_string().contains("names no DiskSection/Disk"), "{e}");

        let bad = OVF.replace("ovf:fileRef=\"f2\"", "ovf:fileRef=\"f9\"");
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.element, "DiskSection/Disk");
        assert!(e.message.contains("\"f9\" names no References/File"), "{e}");

        let bad = OVF.replace("href=\"b.vmdk\"", "href=\"../../etc/shadow\"");
        let e = parse(&bad).unwrap_err();
        assert!(e.message.contains("leaves the package"), "{e}");

        let bad = OVF.replace("byte * 2^20", "furlongs");
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.element, "Item (ResourceType 4, memory)");

        let e = parse(&OVF[..OVF.len() - 20]).unwrap_err();
        assert_eq!(e.element, "XML");

        let e = parse("<Envelope><VirtualSystemCollection/></Envelope>").unwrap_err();
        assert!(e.message.contains("VirtualSystemCollection"), "{e}");
    }
}
